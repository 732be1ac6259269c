"""INT8 quantization: torchao dynamic (eager), and PT2E static / QAT lowered to x86 oneDNN int8 kernels.

- int8_dynamic: torchao `quantize_` with Int8DynamicActivationInt8WeightConfig. Linear weights are
  stored int8, activations quantized per token at run time; the artifact is a weights_only state dict.
- int8_static: PT2E (torch.export -> prepare_pt2e with X86InductorQuantizer -> calibration on training
  batches -> convert_pt2e). Conv and linear weights and activations are int8.
- int8_qat: the same quantizer with fake-quantization inserted by prepare_qat_pt2e, fine-tuned with the
  shared training loop, then converted.

A converted PT2E graph is not an nn.Module tree that a state dict can rebuild (its activation scales
are constants inside the graph), so we store it as a torch.export archive (`torch.export.save`).
Plain tensors in that archive are raw bytes, loaded without pickle; `load_exported` refuses an
archive that holds any pickled payload. For running, the loaded reference graph (quantize/dequantize
around float ops) is lowered to oneDNN int8 kernels, the same passes torchao's x86 lowering runs.
"""

import json
import logging
import time
import zipfile
from io import BytesIO
from pathlib import Path

import torch
from torch import nn

from joulebench import store as io
from joulebench.compress import pt2e_patterns

METHODS = ("int8_dynamic", "int8_static", "int8_qat")
log = logging.getLogger(__name__)
EXPORTED_METHODS = ("int8_static", "int8_qat")
# torch.export specializes a dimension seen as 1, so graphs are traced at batch 2 with batch dynamic.
MAX_BATCH = 65536


# -- torchao dynamic (eager) -------------------------------------------------------------------


# What each method's work imports, by method: quantize_model imports them before its energy window
# opens (importing is not the measured work; joulebench.energy.process.imported_packages flags a window
# that still imports). PT2E export traces the model with Dynamo and folds constants with Inductor.
_PT2E = (
    "torch._dynamo",
    "torch.export",
    "torchao.quantization.pt2e",
    "torchao.quantization.pt2e.quantize_pt2e",
    "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer",
    "torch._export.utils",
    "torch._inductor.constant_folding",
    "torch._inductor.fx_passes.freezing_patterns",
)
WORK_MODULES = {"int8_dynamic": ("torchao.quantization",), "int8_static": _PT2E, "int8_qat": _PT2E}


def dynamic_int8(model: nn.Module) -> nn.Module:
    """int8 weights, per-token dynamic int8 activations, on every linear layer (torchao, eager)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model.eval(), Int8DynamicActivationInt8WeightConfig())
    return model


def quantized_tensor_types() -> tuple:
    """Tensor classes a dynamic-int8 artifact holds; allowed explicitly for weights_only loading."""
    from torchao.quantization import Int8Tensor

    return (Int8Tensor,)


def int8_linear_count(model: nn.Module) -> int:
    """Linear layers whose weight is stored as an int8 tensor (a torchao quantized tensor)."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            stored = getattr(module.weight, "qdata", None)
            if stored is not None and stored.dtype is torch.int8:
                count += 1
    return count


# -- PT2E static and QAT -----------------------------------------------------------------------


def _dynamic_batch(example: torch.Tensor):
    if len(example) < 2:
        raise ValueError("trace PT2E graphs with a batch of at least 2 samples (a batch of 1 is specialized)")
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


# Stateless activation modules that models call more than once (torchvision's BasicBlock reuses
# self.relu). The quantizer groups nodes into partitions by their innermost module, so two calls of
# one module form one partition with two outputs, which X86InductorQuantizer rejects; we give each
# call its own module path in the node metadata.
REUSABLE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU)
_ACTIVATION_NAMES = {f"{cls.__module__}.{cls.__qualname__}" for cls in REUSABLE_ACTIVATIONS}


def _is_activation(cls) -> bool:
    if isinstance(cls, type):
        return issubclass(cls, REUSABLE_ACTIVATIONS)
    return cls in _ACTIVATION_NAMES


def _export(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    exported = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(example)).module()
    for node in exported.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (path, cls) = list(stack.items())[-1]
        if _is_activation(cls):
            stack[key] = (f"{path}.{node.name}", cls)
    return exported


def _x86_quantizer(is_qat: bool):
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config(is_qat=is_qat))
    return quantizer


def _drop_unused_attributes(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Delete float parameters the converted graph no longer reads (its weights are int8 constants now).

    Without this, exporting the converted graph stores every float weight next to its int8 copy.
    """
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in list(graph_module.named_parameters()) + list(graph_module.named_buffers()):
        if name not in used:
            owner_path, _, attribute = name.rpartition(".")
            owner = graph_module.get_submodule(owner_path) if owner_path else graph_module
            delattr(owner, attribute)
    graph_module.delete_all_unused_submodules()
    return graph_module


@torch.no_grad()
def static_int8(model: nn.Module, calibration_batches: list[torch.Tensor]) -> torch.fx.GraphModule:
    """Post-training static INT8: observers record activation ranges on the calibration batches."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(_export(model.eval(), calibration_batches[0]), _x86_quantizer(is_qat=False))
    for batch in calibration_batches:
        prepared(batch)
    return _drop_unused_attributes(convert_pt2e(prepared))


def prepare_qat(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Fake-quantized training graph; `.train()`/`.eval()` work on it, so the shared loop can fine-tune it."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    prepared = prepare_qat_pt2e(_export(model.train(), example), _x86_quantizer(is_qat=True))
    allow_exported_model_train_eval(prepared)
    return prepared


def convert_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    return _drop_unused_attributes(convert_pt2e(prepared))


# Node metadata that describes the run that traced a graph, not the graph: `stack_trace` names the
# source files (under the checkout and its environment) that each op came from, and `from_node`
# records the passes that made each node with the Python object id of every intermediate graph.
# torch.export.save writes both into the archive's model.json, so the same model saved from another
# checkout, or by another process, would be other bytes. Nothing reads them on load: running a
# loaded graph (lower_to_x86) traces it afresh.
RUN_SPECIFIC_NODE_METADATA = ("stack_trace", "from_node")


def _without_run_specific_metadata(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Drop RUN_SPECIFIC_NODE_METADATA from every node, in place, so the archive depends on the model only.

    The archive's `.data/serialization_id` needs nothing: torch derives it from the record names and
    their contents' CRC32, so it repeats when they do.
    """
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                for key in RUN_SPECIFIC_NODE_METADATA:
                    node.meta.pop(key, None)
    return program


def save_exported(converted: torch.fx.GraphModule, example: torch.Tensor, path) -> None:
    """The converted graph as a torch.export archive: the same model gives the same bytes, wherever saved."""
    program = torch.export.export(converted, (example,), dynamic_shapes=_dynamic_batch(example))
    _without_run_specific_metadata(program)
    archive = BytesIO()  # through a buffer: torch.export insists on a .pt2 name for files
    torch.export.save(program, archive)
    io.write_atomic(path, lambda tmp: Path(tmp).write_bytes(archive.getvalue()))


def _pickled_payloads(path) -> list[str]:
    """Names of entries in a torch.export archive that would be unpickled on load."""
    pickled = []
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(("model_weights_config.json", "model_constants_config.json")):
                config = json.loads(archive.read(name))["config"]
                pickled += [key for key, meta in config.items() if meta.get("use_pickle")]
            elif "/custom_obj" in name or "/opaque_obj" in name:
                pickled.append(name)
    return pickled


def load_reference(path) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """(reference quantize/dequantize graph, its example input) from a torch.export archive."""
    import torchao.quantization.pt2e  # noqa: F401 - registers the quantized_decomposed ops

    path = Path(path)
    pickled = _pickled_payloads(path)
    if pickled:
        raise ValueError(f"{path}: refusing to load a torch.export archive with pickled entries {pickled}")
    program = torch.export.load(BytesIO(path.read_bytes()))
    (example,) = program.example_inputs[0]
    return _with_train_eval(program.module()), example


def load_exported(path) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    """(lowered graph running oneDNN int8 kernels, reference quantize/dequantize graph)."""
    reference, example = load_reference(path)
    return _with_train_eval(lower_to_x86(reference, example)), reference


def _with_train_eval(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Let `.eval()` work on an exported graph, as on any module (a no-op for inference graphs)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(graph_module)
    return graph_module


def lower_to_x86(graph_module: torch.fx.GraphModule, example: torch.Tensor) -> torch.fx.GraphModule:
    """Replace quantize -> dequantize -> float op patterns with oneDNN int8 kernels (x86, eager).

    These are the passes of torchao's `lower_pt2e_quantized_to_x86`, which re-exports at the example's
    batch size only; we keep the batch dynamic, and turn `view` into `reshape` because the int8 conv
    kernels return channels-last tensors that a flatten-as-view cannot address.
    """
    from torch._export.utils import _is_cia_op
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    decompositions = {op: fn for op, fn in torch.export.default_decompositions().items() if _is_cia_op(op)}
    program = torch.export.export(graph_module, (example,), dynamic_shapes=_dynamic_batch(example))
    lowered = program.run_decompositions(decompositions).module()
    aten = torch.ops.aten
    for node in list(lowered.graph.nodes):
        if node.target == aten.t.default:
            with lowered.graph.inserting_before(node):
                permuted = lowered.graph.call_function(aten.permute.default, args=(node.args[0], [1, 0]))
            node.replace_all_uses_with(permuted)
            lowered.graph.erase_node(node)
        elif node.target == aten.view.default:
            node.target = aten.reshape.default
    lowered.recompile()
    with torch.no_grad():
        freezing_passes(lowered, (example,))
        constant_fold(lowered)
    return lowered


def int8_kernel_ops(graph_module: torch.fx.GraphModule) -> list[str]:
    """The oneDNN quantized kernels (qconv/qlinear) a lowered graph calls, one entry per call."""
    ops = []
    for node in graph_module.graph.nodes:
        name = str(node.target)
        if node.op == "call_function" and name.startswith("onednn.q") and "prepack" not in name:
            ops.append(name)
    return ops


def trace_before_window() -> None:
    """Trace every pattern a PT2E job's passes match against, on a tiny conv + batch-norm model."""
    cache = pt2e_patterns.keep_traced_patterns()
    if cache is None:
        return
    started, before = time.perf_counter(), cache.traced
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    example = torch.zeros(2, 1, 4, 4)
    prepared = prepare_qat(model, example)
    prepared.train()
    prepared(example)  # observers see data, as in fine-tuning
    prepared.eval()
    converted = convert_qat(prepared)
    lower_to_x86(converted, example)
    if cache.traced > before:
        log.info(
            "traced %d of torchao's PT2E patterns before the window (%.1f s, not measured)",
            cache.traced - before,
            time.perf_counter() - started,
        )


# ... and what each method's passes trace (torchao's pattern graphs), traced before the window too
# (joulebench.run.prepare.prepare_before_window).
WORK_SETUP = {method: trace_before_window for method in EXPORTED_METHODS}
