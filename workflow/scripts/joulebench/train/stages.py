"""The training rules' stages: train a variant from scratch or fine-tune it, distil a student."""

import logging
from dataclasses import replace

import torch

from joulebench import store
from joulebench.devices import placement_on
from joulebench.models import build_model, check_input, freeze_pretrained, model_recipe
from joulebench.precision import effective_precision
from joulebench.run.lazy_import import pandas as pd
from joulebench.run.prepare import import_before_window
from joulebench.saved import load_model
from joulebench.train import loop, power_limit
from joulebench.train.checkpoint import file_digest
from joulebench.train.loop import Distillation, seed_everything, training_settings
from joulebench.train.overrides import cpu_threads, needs_gpu, pinned_device, training_overrides
from joulebench.train.pretrained import load_weights
from joulebench.train.resume import train_resumably

log = logging.getLogger(__name__)


def train_model(
    inputs: dict,
    outputs: dict,
    model_name: str,
    variant: dict,
    training: dict,
    seed: int,
    estimate: dict,
    checkpoint=None,
    transforms: list = (),
    pretrained: dict | None = None,
) -> None:
    """Train from scratch (the fp32 baseline, a precision or subset variant), or fine-tune a
    pretrained model (technique finetune; `pretrained` holds the model's `weights` and `download`).

    A precision the device cannot compute in runs as the precision autocast really uses there
    (fp16 -> bf16 on a CPU without fp16 autocast); the recipe and training.json name both.
    A data_parallel variant starts its workers here, which write the outputs and resume from the
    checkpoint like a single process (joulebench.train.data_parallel). `transforms`: the online
    augmentation of the training batches.
    """
    if variant.get("technique") == "data_parallel":
        _launch_data_parallel(
            inputs, outputs, model_name, variant, training, seed, estimate, checkpoint, transforms
        )
        return
    placement = placement_on(pinned_device(variant))
    if needs_gpu(variant) and placement.gpu is None:
        write_skipped(outputs, "train_model", power_limit.NO_GPU)
        return
    threads = cpu_threads(variant)
    if threads is not None:
        torch.set_num_threads(threads)
    arrays, facts = store.load_arrays(inputs["splits"]), store.read_json(inputs["facts"])
    requested = variant.get("precision", "fp32")
    precision = effective_precision(requested, placement.torch_device)
    if precision != requested:
        log.warning("%s is not supported here; training in %s instead", requested, precision)
    seed_everything(seed)
    recipe = model_recipe(
        model_name,
        facts["channels"],
        facts["num_classes"],
        facts["image_size"],
        precision,
        precision_requested=requested,
    )
    if pinned_device(variant):  # evaluation and every model made from this one run there too
        recipe["device"] = pinned_device(variant)
    model = _initial_model(recipe, variant, pretrained)
    check_input(model, model_name, (facts["channels"], *facts["image_size"]), facts["num_classes"])
    settings = replace(
        training_settings(training, seed, precision, epochs=variant.get("epochs")),
        target_val_accuracy=training.get("target_val_accuracy"),
        augmentation=tuple(transforms),
        **training_overrides(variant, training),
    )
    import_before_window(
        [*loop.WORK_MODULES, *(["joulebench.data.augment", "albumentations"] if transforms else [])]
    )
    limit_facts, conditions = power_limit.training_conditions(variant, placement)
    data_facts = {"splits": file_digest(inputs["splits"]), **limit_facts}
    train_resumably(
        "train_model",
        model,
        recipe,
        arrays,
        settings,
        placement,
        estimate,
        outputs,
        checkpoint,
        data_facts,
        conditions=conditions,
    )


def _launch_data_parallel(
    inputs, outputs, model_name, variant, training, seed, estimate, checkpoint, transforms
):
    """Start a data_parallel variant's workers, which write the outputs and resume from the
    checkpoint like a single process (joulebench.train.data_parallel)."""
    from joulebench.train.data_parallel import launch_training

    spec = {
        "inputs": {k: str(v) for k, v in inputs.items()},
        "outputs": {k: str(v) for k, v in outputs.items()},
        "model": model_name,
        "training": training,
        "seed": seed,
        "estimate": estimate,
        "transforms": list(transforms),
        # Per-epoch checkpoint (resume after a kill) and the data it was made from.
        "checkpoint": str(checkpoint) if checkpoint else None,
        "data_facts": {"splits": file_digest(inputs["splits"])},
    }
    launch_training(spec, variant["processes"])


def _initial_model(recipe: dict, variant: dict, pretrained: dict | None):
    """A from-scratch model, or for a fine-tune the pretrained one (the recipe records the weights;
    with freeze_backbone only the new head and adapted stem layers train)."""
    if variant.get("technique") != "finetune":
        return build_model(recipe)
    state_dict, provenance = load_weights(recipe["arch"], pretrained["weights"], pretrained["download"])
    recipe["pretrained"] = {**provenance, "freeze_backbone": variant["freeze_backbone"]}
    model = build_model(recipe, state_dict)
    if variant["freeze_backbone"]:
        trainable = freeze_pretrained(model, state_dict)
        recipe["pretrained"]["trainable_parameters"] = trainable
        log.info("frozen backbone; training %s", trainable)
    return model


def write_skipped(outputs: dict, rule: str, reason: str) -> None:
    """The declared outputs of a training rule whose variant cannot run on this host, each saying
    why.

    The DAG is fixed before any job runs and cannot know the host a job lands on, so the rule still
    makes its outputs: every JSON file (recipe, training summary, energy record) holds the
    `skipped` marker, the weights file is empty, the history has no epochs; evaluation passes the
    marker on, and the report lists the variant instead of a result.
    """
    marker = {"skipped": reason, "rule": rule}
    log.warning("%s skipped: %s", rule, reason)
    for path in outputs.values():
        if str(path).endswith(".json"):
            store.write_json(path, marker)
        elif str(path).endswith(".csv"):
            store.write_csv(path, pd.DataFrame(columns=["epoch"]))
        else:
            store.write_atomic(path, lambda tmp: open(tmp, "wb").close())


def distill_model(
    inputs: dict, outputs: dict, variant: dict, training: dict, seed: int, estimate: dict, checkpoint=None
) -> None:
    """Train a smaller student against the teacher's soft targets (teacher forwards are metered)."""
    arrays = store.load_arrays(inputs["splits"])
    teacher, teacher_recipe = load_model(inputs["model"], inputs["recipe"])
    seed_everything(seed)
    recipe = model_recipe(
        variant.get("student_arch", teacher_recipe["arch"]),
        teacher_recipe["in_channels"],
        teacher_recipe["num_classes"],
        teacher_recipe.get("image_size"),
        width=variant["student_width"],
    )
    if teacher_recipe.get("device"):  # a student of a pinned teacher trains where it does
        recipe["device"] = teacher_recipe["device"]
    student = build_model(recipe)
    distillation = Distillation(teacher, variant["temperature"], variant["alpha"])
    import_before_window(loop.WORK_MODULES)
    settings = replace(
        training_settings(training, seed, epochs=variant.get("epochs")),
        target_val_accuracy=training.get("target_val_accuracy"),
    )
    facts = {
        "splits": file_digest(inputs["splits"]),
        "teacher": file_digest(inputs["model"]),
        "distillation": [variant["temperature"], variant["alpha"]],
    }
    train_resumably(
        "distill_model",
        student,
        recipe,
        arrays,
        settings,
        placement_on(recipe.get("device")),
        estimate,
        outputs,
        checkpoint,
        facts,
        distillation,
    )
