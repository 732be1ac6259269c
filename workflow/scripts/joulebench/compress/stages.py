"""The compression rules' stages: prune or quantize a trained parent."""

import logging

from joulebench import precision, store
from joulebench.compress import apply, prune, quantize
from joulebench.devices import CPU, Placement, placement_on
from joulebench.energy.meter import rule_meter
from joulebench.run.lazy_import import pandas as pd
from joulebench.run.prepare import import_before_window, prepare_before_window
from joulebench.saved import load_model
from joulebench.train import loop
from joulebench.train.loop import seed_everything, training_settings
from joulebench.train.resume import write_trained

log = logging.getLogger(__name__)


def prune_model(
    inputs: dict, outputs: dict, variant: dict, training: dict, seed: int, estimate: dict
) -> None:
    """Unstructured (masks made permanent) or channel pruning of the parent, fine-tuned; see compress."""
    arrays = store.load_arrays(inputs["splits"])
    model, recipe = load_model(inputs["model"], inputs["recipe"])
    seed_everything(seed)
    settings = training_settings(training, seed, epochs=variant["finetune_epochs"])
    import_before_window([*loop.WORK_MODULES, *prune.WORK_MODULES[variant["method"]]])
    with rule_meter("prune_model", estimate, placement_on(recipe.get("device"))) as meter:
        model, history, facts = apply.apply_pruning(model, variant, arrays, settings, meter)
    record = {**meter.record(), "numerics": precision.numeric_flags()}
    write_trained(outputs, model, {**recipe, "pruning": {**variant, **facts}}, history, record)


def quantization_placement(method: str, recipe: dict) -> Placement:
    """Where a quantize_model job computes: post-training int8 on the CPU kernels it targets; QAT
    fine-tunes where its parent was pinned, else on the GPU if any."""
    return placement_on(recipe.get("device")) if method == "int8_qat" else CPU


def quantize_model(
    inputs: dict, outputs: dict, variant: dict, training: dict, seed: int, estimate: dict
) -> None:
    """INT8 quantization of the parent: dynamic, static with calibration, or QAT (joulebench.compress.apply).
    Post-training methods have no epochs: their history has none."""
    arrays = store.load_arrays(inputs["splits"])
    model, recipe = load_model(inputs["model"], inputs["recipe"])
    seed_everything(seed)
    settings = training_settings(training, seed, epochs=variant["finetune_epochs"])
    placement = quantization_placement(variant["method"], recipe)
    prepare_before_window(quantize, variant["method"])  # PT2E methods: Dynamo, traced patterns
    with rule_meter("quantize_model", estimate, placement) as meter:
        model, history, facts = apply.apply_quantization(model, variant, arrays, settings, meter)
    log.info("quantization: %s", facts)
    recipe = {**recipe, "quantization": variant["method"]}
    apply.save_quantized(model, recipe, arrays, outputs["model"], outputs["recipe"])
    store.write_csv(outputs["history"], pd.DataFrame(history, columns=None if history else ["epoch"]))
    # A QAT fine-tune trains: its record says under which numeric flags.
    numerics = {"numerics": precision.numeric_flags()} if variant["method"] == "int8_qat" else {}
    store.write_json(outputs["energy"], {**meter.record(), **numerics})
