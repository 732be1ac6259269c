"""One configured compression variant applied to a model: technique steps plus shared-loop fine-tuning.

The techniques themselves live in joulebench.compress.prune and joulebench.compress.quantize; this
module reads a variant's config, runs its steps under named energy windows, and says what it did (`facts`).
"""

import logging

import torch
from torch import nn

from joulebench import store
from joulebench.compress import prune, quantize
from joulebench.data.loader import loader
from joulebench.models import count_parameters, save_model
from joulebench.train.loop import TrainSettings, train

log = logging.getLogger(__name__)


def training_batches(arrays: dict, batch_size: int, count: int) -> list[torch.Tensor]:
    """The first `count` unshuffled training batches (deterministic calibration data), for work on
    the CPU (calibration, tracing): never pinned for a GPU."""
    batches = []
    for images, _ in loader(arrays, "train", batch_size, device=torch.device("cpu")):
        if len(batches) == count:
            break
        batches.append(images)
    return batches


def example_batch(arrays: dict) -> torch.Tensor:
    """Two training images: graphs are traced at batch 2 so the batch dimension stays dynamic."""
    return training_batches(arrays, 2, 1)[0]


def apply_pruning(model: nn.Module, variant: dict, arrays: dict, settings: TrainSettings, meter):
    """Prune as configured and fine-tune; returns (model, history rows, facts)."""
    model.cpu().eval()
    params_before = count_parameters(model)[0]
    history = []
    if variant["method"] == "channel":
        channels_before = prune.channel_counts(model)
        with meter.window("prune"):
            prune.channel_prune(model, variant["channel_ratio"], example_batch(arrays))
        history = train(model, arrays, settings, meter)
        facts = {"channels_before": channels_before, "channels_after": prune.channel_counts(model)}
    else:
        steps = variant["steps"]
        for step, amount in enumerate(prune.step_amounts(variant["sparsity"], steps), start=1):
            with meter.window(f"prune{step}"):
                prune.global_magnitude_prune(model.cpu(), amount)
            # Each step's fine-tune counts from zero; its cumulative columns continue the steps before.
            before = history[-1] if history else {"cumulative_seconds": 0.0, "cumulative_joules": 0.0}
            for row in train(model, arrays, settings, meter):
                row["cumulative_seconds"] += before["cumulative_seconds"]
                row["cumulative_joules"] += before["cumulative_joules"]
                history.append({"prune_step": step, **row})
        prune.make_pruning_permanent(model)
        facts = {"weight_sparsity": prune.weight_sparsity(model.cpu())}
    facts["params_before"], facts["params_after"] = params_before, count_parameters(model)[0]
    log.info("pruning: %s", facts)
    return model.cpu().eval(), history, facts


def apply_quantization(model: nn.Module, variant: dict, arrays: dict, settings: TrainSettings, meter):
    """Quantize as configured (QAT fine-tunes first); returns (model or converted graph, history, facts)."""
    method = variant["method"]
    model.cpu().eval()
    history = []
    if method == "int8_dynamic":
        with meter.window("quantize"):
            model = quantize.dynamic_int8(model)
        return model, history, {"int8_linear_layers": quantize.int8_linear_count(model)}
    if method == "int8_static":
        with meter.window("quantize"):
            calibration = training_batches(arrays, settings.batch_size, variant["calibration_batches"])
            converted = quantize.static_int8(model, calibration)
    elif method == "int8_qat":
        with meter.window("prepare_qat"):
            prepared = quantize.prepare_qat(model, example_batch(arrays))
        history = train(prepared, arrays, settings, meter)
        with meter.window("quantize"):
            converted = quantize.convert_qat(prepared.cpu())
    else:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {quantize.METHODS}")
    return converted, history, {"quantized_graph_nodes": len(converted.graph.nodes)}


def save_quantized(model, recipe: dict, arrays: dict, model_path, recipe_path) -> None:
    """A state dict for eager (torchao) models; a torch.export archive for converted PT2E graphs."""
    if recipe["quantization"] in quantize.EXPORTED_METHODS:
        quantize.save_exported(model, example_batch(arrays), model_path)
        store.write_json(recipe_path, {**recipe, "format": "torch.export"})
    else:
        save_model(model, recipe, model_path, recipe_path)
