"""Evaluation on the shared test set: accuracy, size, compute, latency and inference energy."""

import logging
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from joulebench.models import count_parameters
from joulebench.train import accuracy

log = logging.getLogger(__name__)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, counted by Torch-Pruning's layer-hook counter.

    Convention: FLOPs = 2 x MACs. We use Torch-Pruning's counter rather than
    torch.utils.flop_counter because the latter imports torch._dynamo (3 s per job here) and both
    agree on conv/linear layers; Torch-Pruning also counts the small element-wise layers.
    """
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


@torch.inference_mode()
def latency_ms(model: nn.Module, example: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        model(example)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(example)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


@torch.inference_mode()
def throughput(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Samples per second at the batch size of `batch`, after one warm-up pass."""
    model(batch)
    started = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    return repeats * len(batch) / (time.perf_counter() - started)


def evaluate(model: nn.Module, arrays: dict, artifact: Path, settings: dict, meter) -> dict:
    """All metrics of one model; inference energy comes from a window over the test set."""
    model.eval()
    test_x = torch.from_numpy(arrays["test_x"])
    with meter.window("inference") as window:
        test_accuracy = accuracy(model, arrays, "test", settings["batch_size"])
    params, nonzero = count_parameters(model)
    macs = count_macs(model, test_x[:1])
    latencies = latency_ms(model, test_x[:1], settings["warmup"], settings["latency_repeats"])
    batch = test_x[: settings["batch_size"]]
    record = window.record
    return {
        "test_accuracy": test_accuracy,
        "params": params,
        "nonzero_params": nonzero,
        "size_bytes": artifact.stat().st_size,
        "macs": macs,
        "flops": 2 * macs,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "throughput_per_s": throughput(model, batch, settings["throughput_repeats"]),
        "throughput_batch_size": len(batch),
        "inference_joules_per_1k": record["joules"] * 1000 / len(test_x),
        "inference_energy_source": record["source"],
    }
