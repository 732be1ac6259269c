"""The evaluation rules' stages: a variant's accuracy and inference energy, and the
interleaved comparison of a model's variants.
"""

import logging

import torch

from joulebench import store
from joulebench.compress.quantize import load_reference
from joulebench.devices import CPU, Placement, accelerator, placement_on
from joulebench.energy.meter import rule_meter
from joulebench.evaluate.metrics import evaluate
from joulebench.evaluate.protocol import Protocol
from joulebench.run.lazy_import import pandas as pd
from joulebench.saved import load_model

log = logging.getLogger(__name__)


def first_call_before_window(model, recipe: dict, arrays: dict) -> None:
    """An exported (PT2E) int8 graph loads torch passes when first switched to eval mode (its
    `.eval()` rewrites the graph) and first called: do both before the window opens."""
    if recipe.get("format") == "torch.export":
        model.eval()
        with torch.no_grad():
            model(torch.from_numpy(arrays["test_x"][:1]))


def inference_placement(recipe: dict) -> Placement:
    """Where a model infers: where it would be deployed. An int8 model on the CPU kernels it was
    made for; a float model on the device its variant was pinned to, else on the GPU where there
    is one (in the precision it was trained in)."""
    return CPU if recipe.get("quantization") else placement_on(recipe.get("device"))


def evaluate_model(inputs: dict, outputs: dict, evaluation: dict, estimate: dict) -> None:
    recipe = store.read_json(inputs["recipe"])
    if recipe.get("skipped"):  # a variant this host could not run (write_skipped): pass the marker on
        for path in outputs.values():
            store.write_json(path, {"skipped": recipe["skipped"], "rule": "evaluate_model"})
        return
    arrays = store.load_arrays(inputs["splits"])
    model, recipe = load_model(inputs["model"], inputs["recipe"])
    # A lowered int8 graph calls fused kernels; count parameters and MACs on its reference graph.
    reference = load_reference(inputs["model"])[0] if recipe.get("format") == "torch.export" else None
    placement = inference_placement(recipe)
    first_call_before_window(model, recipe, arrays)
    precision = recipe.get("precision", "fp32")
    with rule_meter("evaluate_model", estimate, placement) as meter:
        metrics = evaluate(model, arrays, inputs["model"], evaluation, meter, reference, precision)
    metrics["precision"] = precision
    log.info("metrics: %s", metrics)
    store.write_json(outputs["metrics"], metrics)
    store.write_json(outputs["energy"], {**meter.record(), "protocol": metrics["protocol"]})


def compare_inference(
    inputs: dict, outputs: dict, variants: list, evaluation: dict, estimate: dict, seed: int
) -> None:
    """Every variant of one model and seed in interleaved, shuffled rounds (joulebench.evaluate.interleaved).

    `inputs` holds `model_<variant>` and `recipe_<variant>` of each of `variants`.
    """
    from joulebench.evaluate.interleaved import Candidate, interleaved_rounds

    arrays = store.load_arrays(inputs["splits"])
    candidates = {}
    for variant in variants:
        if store.read_json(inputs[f"recipe_{variant}"]).get("skipped"):
            continue  # a variant this host cannot run (write_skipped): nothing to compare
        model, recipe = load_model(inputs[f"model_{variant}"], inputs[f"recipe_{variant}"])
        placement = inference_placement(recipe)
        first_call_before_window(model, recipe, arrays)
        candidates[variant] = Candidate(model, placement, recipe.get("precision", "fp32"))
    with rule_meter("compare_inference", estimate, accelerator()) as meter:
        rows = interleaved_rounds(candidates, arrays, evaluation, meter, seed)
    store.write_csv(outputs["rounds"], pd.DataFrame(rows))
    protocol = Protocol.from_config(evaluation, accelerator().torch_device.type).describe()
    store.write_json(outputs["energy"], {**meter.record(), "protocol": protocol})
