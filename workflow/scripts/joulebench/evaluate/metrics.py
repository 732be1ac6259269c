"""Evaluation on the shared test set: accuracy, size, compute, latency and inference energy."""

import logging
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

# Imported with this module, not inside an evaluation's energy window (it loads triton).
from torch.utils.flop_counter import FlopCounterMode

from joulebench.energy.gpu_access import gpu_name
from joulebench.energy.inventory import cpu_model
from joulebench.evaluate.accuracy import accuracy
from joulebench.evaluate.protocol import Protocol, repeat_for, warm_up
from joulebench.models import count_parameters
from joulebench.precision import PRECISIONS, effective_precision, out_of_memory_hint

log = logging.getLogger(__name__)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, counted by torch.utils.flop_counter.

    Convention: FLOPs = 2 x MACs; the counter reports FLOPs of convolutions and matrix products
    (not element-wise ops), which is how torchvision's documented "GFLOPS" (really GMACs) are made,
    and they match within 1% for every family we claim (tests/unit/evaluate/test_evaluate.py).
    Attention counts its two matrix products (Q K^T and attention x V) also where PyTorch runs
    fused kernels the counter has no formula for: CPU scaled_dot_product_attention and nn.MultiheadAttention's
    inference fast path. torchao's int8 matrix product is counted like a float one: quantization
    changes the number format, not the multiply-accumulates. Torch-Pruning's counter also counts
    batch norm and activations, so it reads 1-6% above torchvision's numbers.
    """
    _skip_dynamo_import()
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_FUSED_OP_FLOPS) as counter:
        model(example)
    return counter.get_total_flops() // 2


def _skip_dynamo_import() -> None:
    """Spare count_macs the import of torch._dynamo (and sympy): 1-3 s of every evaluate_model job
    on a 2-core CPU host, more than the count itself.

    torch wraps the counter's dispatch handler in `torch._disable_dynamo`, which imports Dynamo on
    the handler's first call only to keep torch.compile out of it. Nothing is compiled where Dynamo
    was never imported, so the handler is marked as already disabled, the cache that wrapper keeps
    (torch/_compile.py). Where Dynamo is loaded, or torch's wrapper changes, nothing is touched.
    """
    import sys

    from torch.utils import flop_counter

    handler = getattr(flop_counter._FlopCounterMode.__torch_dispatch__, "__wrapped__", None)
    if "torch._dynamo" not in sys.modules and handler is not None:
        setattr(handler, "__dynamo_disable", handler)  # noqa: B010 - the name torch reads, unmangled


def _matmul_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    rows, inner = a_shape
    return 2 * rows * inner * b_shape[1]


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _fused_multi_head_attention_flops(
    query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None, **kwargs
) -> int:
    """nn.MultiheadAttention's fast path: input projections, attention, output projection."""
    from torch.utils.flop_counter import sdpa_flop_count

    batch, target_len, _ = query_shape
    source_len = key_shape[1]
    projections = 2 * embed_dim * embed_dim * (2 * batch * target_len + 2 * batch * source_len)
    head_dim = embed_dim // num_heads
    heads = (batch, num_heads, target_len, head_dim), (batch, num_heads, source_len, head_dim)
    return projections + sdpa_flop_count(heads[0], heads[1], heads[1])


# Ops the counter has no formula for; each counts like the unfused ops it replaces.
_FUSED_OP_FLOPS = {
    torch.ops.aten._int_mm: _matmul_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._native_multi_head_attention: _fused_multi_head_attention_flops,
}


@torch.inference_mode()
def latency_ms(
    model: nn.Module, example: torch.Tensor, warmup: int, repeats: int, sync=lambda: None
) -> list[float]:
    """Per-call latency; `sync` waits for the device, so a GPU call is timed to its end."""
    for _ in range(warmup):
        model(example)
    samples = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        model(example)
        sync()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


@torch.inference_mode()
def throughput(model: nn.Module, batch: torch.Tensor, repeats: int, sync=lambda: None) -> float:
    """Samples per second at the batch size of `batch`, after one warm-up pass."""
    model(batch)
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    sync()
    return repeats * len(batch) / (time.perf_counter() - started)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters), int8 weights included.

    A converted PT2E graph holds its weights as int8 constants (buffers), not parameters; its
    quantization scales and zero points are not counted, and batch norm is folded into the convs.
    """
    total, nonzero = count_parameters(model)
    for buffer in model.buffers():
        if buffer.dtype is torch.int8:
            total += buffer.numel()
            nonzero += int(torch.count_nonzero(buffer))
    return total, nonzero


def inference_autocast(precision: str, device: torch.device):
    """(precision really computed in, its autocast context): a model infers in the precision it
    was trained in, where the device can (see train.effective_precision)."""
    precision = effective_precision(precision, device)
    dtype = PRECISIONS[precision]
    return precision, torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def evaluate(
    model: nn.Module,
    arrays: dict,
    artifact: Path,
    settings: dict,
    meter,
    reference: nn.Module | None = None,
    precision: str = "fp32",
) -> dict:
    """All metrics of one model; inference energy comes from a window over the test set.

    The model runs where the meter meters (`meter.placement`: the GPU for float models where there
    is one, the CPU for int8 graphs lowered to CPU kernels), under autocast to the precision it was
    trained in. `reference` is the graph to count parameters and MACs on where `model` runs fused
    kernels the counter cannot see into (a lowered int8 graph); by default the model itself.
    """
    model.eval()
    reference = model if reference is None else reference
    test_x = torch.from_numpy(arrays["test_x"])
    # Counted on the CPU, before the model moves to its inference device.
    params, nonzero = parameter_counts(reference)
    macs = count_macs(reference, test_x[:1])
    placement = meter.placement
    device = placement.torch_device
    model.to(device)
    precision, autocast = inference_autocast(precision, device)
    protocol = Protocol.from_config(settings, device.type)

    def test_pass() -> float:
        return accuracy(model, arrays, "test", settings["batch_size"])

    fits = out_of_memory_hint(device, "evaluation", settings["batch_size"], "evaluation.batch_size")
    with fits, autocast, protocol.fixed_threads():
        test_accuracy = test_pass()
        warm_up(test_pass, protocol.warmup_seconds)
        with meter.window("inference") as window:
            passes, inference_seconds = repeat_for(test_pass, protocol)
    example, batch = test_x[:1].to(device), test_x[: settings["batch_size"]].to(device)
    with autocast, protocol.fixed_threads():
        latencies = latency_ms(
            model, example, settings["warmup"], settings["latency_repeats"], placement.synchronize
        )
        samples_per_s = throughput(model, batch, settings["throughput_repeats"], placement.synchronize)
    record = window.record
    return {
        "test_accuracy": test_accuracy,
        "params": params,
        "nonzero_params": nonzero,
        "size_bytes": Path(artifact).stat().st_size,
        "macs": macs,
        "flops": 2 * macs,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "throughput_per_s": samples_per_s,
        "throughput_batch_size": len(batch),
        "inference_joules_per_1k": record["joules"] * 1000 / (passes * len(test_x)),
        "inference_energy_source": record["source"],
        "inference_passes": passes,
        "inference_seconds": inference_seconds,
        # The device doing the work (the metered GPU's NVML name, else torch's), not the tensors'.
        "inference_device": placement.device,
        "inference_device_name": (
            (meter.gpu_access.name or gpu_name(placement)) if placement.gpu is not None else cpu_model()
        ),
        "inference_precision": precision,
        "protocol": protocol.describe(),
    }
