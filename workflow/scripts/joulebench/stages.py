"""One function per workflow rule: read the declared inputs, do the work under an EnergyMeter,
write the declared outputs.

Each stage takes `inputs` and `outputs`, the rule's declared files by name (Snakemake's `input`
and `output`), so a file's path is spelled once, in its rule; the rest are the config values the
rule passes as params. Rule adapters in workflow/scripts/ only unpack Snakemake's object and call
one of these.
"""

import importlib
import logging
from dataclasses import replace

import numpy as np
import torch

from joulebench import store
from joulebench.compress import apply, prune, quantize
from joulebench.compress.quantize import load_reference
from joulebench.data import diversity, sources
from joulebench.devices import CPU, Placement, accelerator, placement_on
from joulebench.energy.meter import EstimateModel, measure_idle_power, rule_meter
from joulebench.evaluate.metrics import evaluate
from joulebench.evaluate.protocol import Protocol
from joulebench.models import build_model, check_input, freeze_pretrained, load_model, model_recipe
from joulebench.run.lazy import pandas as pd
from joulebench.train import loop, power_limit
from joulebench.train.checkpoint import file_digest
from joulebench.train.loop import Distillation, effective_precision, seed_everything, training_settings
from joulebench.train.overrides import cpu_threads, needs_gpu, pinned_device, training_overrides
from joulebench.train.pretrained import load_weights
from joulebench.train.resume import train_resumably, write_trained

log = logging.getLogger(__name__)


def import_before_window(modules) -> None:
    """Import what a window's work will import: importing is not the measured work, and its time
    varies with the disk cache from run to run (joulebench.energy.meter.imported_packages records any
    package a window still imports)."""
    for name in modules:
        importlib.import_module(name)


def prepare_before_window(stage, method: str) -> None:
    """Import what `method` of `stage` imports in its window (its WORK_MODULES), and run its
    set-up (its WORK_SETUP, such as tracing torchao's patterns): neither is the measured work."""
    import_before_window(stage.WORK_MODULES[method])
    setup = getattr(stage, "WORK_SETUP", {}).get(method)
    if setup is not None:
        setup()


def first_call_before_window(model, recipe: dict, arrays: dict) -> None:
    """An exported (PT2E) int8 graph loads torch passes when first switched to eval mode (its
    `.eval()` rewrites the graph) and first called: do both before the window opens."""
    if recipe.get("format") == "torch.export":
        model.eval()
        with torch.no_grad():
            model(torch.from_numpy(arrays["test_x"][:1]))


def prepare_dataset(inputs: dict, outputs: dict, dataset: dict, skip_unusable: bool, estimate: dict) -> None:
    """Load and split the source; with `skip_unusable` (cleaning on) unusable files are listed in
    `rejected` instead of being fatal. Image files are decoded in the job's threads."""
    sources.import_loaders(dataset)
    with rule_meter("prepare_dataset", estimate) as meter, meter.window("load_and_split"):
        source = sources.load_source(dataset, skip_unusable=skip_unusable, workers=torch.get_num_threads())
        arrays = sources.split_arrays(
            source.images,
            source.labels,
            dataset["val_fraction"],
            dataset["test_fraction"],
            dataset["split_seed"],
            source.classes,
        )
    facts = sources.describe(arrays, source.classes)
    log.info("dataset %s: %s", dataset["name"], {k: facts[f"{k}_count"] for k in sources.SPLITS})
    # Names let the cleaning report point at the file (or source index) of every removed image.
    names = np.asarray(source.names, dtype=str)
    pixel_max = np.asarray(source.pixel_max)
    store.save_arrays(outputs["splits"], {**arrays, "item_names": names, "pixel_max": pixel_max})
    store.write_json(outputs["facts"], facts)
    store.write_csv(outputs["rejected"], pd.DataFrame(source.rejected, columns=["item", "reason", "detail"]))
    store.write_json(outputs["energy"], meter.record())


def clean_dataset(inputs: dict, outputs: dict, cleaning: dict, estimate: dict) -> None:
    """Drop duplicates, leaks and conflicting labels; report every removed item with its reason."""
    from joulebench.data import clean

    raw = dict(store.open_arrays(inputs["splits"]))
    names = [str(name) for name in raw.pop("item_names")]
    classes = store.read_json(inputs["facts"])["classes"]
    settings = {k: v for k, v in cleaning.items() if k != "examples_per_reason"}
    chosen, lookalikes = {}, []
    import_before_window(clean.WORK_MODULES)
    with rule_meter("clean_dataset", estimate) as meter, meter.window("find_duplicates"):
        if cleaning["enabled"]:
            arrays, removed = clean.clean_splits(
                raw, names, settings, torch.get_num_threads(), chosen, lookalikes
            )
        else:
            arrays, removed = raw, []
    # Files the loader could not use were left out before the split; they are removed items too.
    for rejected in pd.read_csv(inputs["rejected"]).to_dict("records"):
        removed.append({"split": "source", **rejected})
    report = clean.cleaning_report(raw, arrays, removed, settings, cleaning["examples_per_reason"])
    report["near_duplicate_thresholds"] = chosen or None
    report["lookalike_pairs"] = len(lookalikes)
    # Diversity of the training split before and after cleaning (the seed's D1 >= D0).
    report["diversity"] = diversity.diversity_of_stages(
        {
            name: (splits["train_x"], splits["train_y"])
            for name, splits in (("raw", raw), ("cleaned", arrays))
        },
        len(classes),
    )
    report["throughput_images_per_s"] = sum(report["before"][s]["count"] for s in sources.SPLITS) / max(
        meter.record()["wall_time_s"], 1e-9
    )
    log.info("removed %s: %s", sources.image_count(len(removed)), report["removed_by_reason"])
    store.save_arrays(outputs["splits"], {**arrays, "item_names": np.asarray(names, dtype=str)})
    store.write_json(outputs["facts"], sources.describe(arrays, classes))
    store.write_json(outputs["report"], report)
    store.write_csv(outputs["removed"], clean.removed_frame(removed))
    store.write_csv(outputs["lookalikes"], clean.lookalike_frame(lookalikes))
    store.write_json(outputs["energy"], meter.record())


def sample_dataset(
    inputs: dict,
    outputs: dict,
    variant_name: str,
    variant: dict,
    training: dict,
    seed: int,
    estimate: dict,
) -> None:
    """A training subset by `variant["method"]` (joulebench.data.sample); a scoring method's proxy run
    is metered here, where the variant is pinned, else on the GPU where there is one. The summary
    names its variant and seed, for the report."""
    from joulebench.data import sample

    arrays, facts = store.open_arrays(inputs["splits"]), store.read_json(inputs["facts"])
    labels, num_classes = arrays["train_y"], facts["num_classes"]
    placement = CPU if variant["method"] in ("random", "stratified") else placement_on(pinned_device(variant))
    import_before_window([*loop.WORK_MODULES, *sample.WORK_MODULES] if variant["method"] == "el2n" else [])
    with rule_meter("sample_dataset", estimate, placement) as meter:
        chosen, choice = sample.select_subset(arrays, facts, variant, training, seed, meter)
    subset = sample.take_train_subset(arrays, chosen)
    summary = {
        "variant": variant_name,
        "method": variant["method"],
        "fraction": variant["fraction"],
        "seed": seed,
        **choice,
        "before": sample.class_balance(labels, num_classes),
        "after": sample.class_balance(subset["train_y"], num_classes),
        "diversity": diversity.diversity_of_stages(
            {"cleaned": (arrays["train_x"], labels), "sampled": (subset["train_x"], subset["train_y"])},
            num_classes,
        ),
    }
    log.info(
        "subset %s: %d of %s", variant["method"], len(chosen), sources.image_count(len(labels), "training")
    )
    store.save_arrays(outputs["splits"], subset)
    store.write_json(outputs["summary"], summary)
    store.write_json(outputs["energy"], meter.record())


def plot_augmentation(inputs: dict, outputs: dict, transforms: list, samples: int) -> None:
    """A figure of training images and their augmentations (the first `samples` of the split)."""
    from joulebench.data import augment

    images = store.load_arrays(inputs["splits"])["train_x"][:samples]
    augment.plot_samples(images, transforms, seed=0, path=outputs["png"])


def augment_dataset(
    inputs: dict, outputs: dict, transforms: list, copies: int, seed: int, estimate: dict
) -> None:
    """Offline augmentation: the splits with `copies` augmented copies of train appended."""
    from joulebench.data import augment

    arrays = store.load_arrays(inputs["splits"])
    with rule_meter("augment_dataset", estimate) as meter, meter.window("augment"):
        augmented = augment.materialize(arrays, transforms, copies, seed)
    log.info("training images: %d -> %d", len(arrays["train_y"]), len(augmented["train_y"]))
    store.save_arrays(outputs["splits"], augmented)
    store.write_json(outputs["energy"], meter.record())


def train_variant(
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
    technique = variant.get("technique", "train")
    if technique == "data_parallel":
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
    data_facts = {"splits": file_digest(inputs["splits"])}
    conditions = None
    if technique == "power_limit":
        data_facts["power_limit"] = {k: v for k, v in variant.items() if k != "technique"}
        conditions = power_limit.held_power_limit(placement, variant)
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


def distill_variant(
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


def prune_variant(
    inputs: dict, outputs: dict, variant: dict, training: dict, seed: int, estimate: dict
) -> None:
    """Unstructured (masks made permanent) or channel pruning of the parent, fine-tuned; see compress."""
    arrays = store.load_arrays(inputs["splits"])
    model, recipe = load_model(inputs["model"], inputs["recipe"])
    seed_everything(seed)
    settings = training_settings(training, seed, epochs=variant["finetune_epochs"])
    import_before_window([*loop.WORK_MODULES, *prune.WORK_MODULES[variant["method"]]])
    with rule_meter("prune_model", estimate, placement_on(recipe.get("device"))) as meter:
        model, history, facts = apply.prune_model(model, variant, arrays, settings, meter)
    record = {**meter.record(), "numerics": loop.numeric_flags()}
    write_trained(outputs, model, {**recipe, "pruning": {**variant, **facts}}, history, record)


def quantize_variant(
    inputs: dict, outputs: dict, variant: dict, training: dict, seed: int, estimate: dict
) -> None:
    """INT8 quantization of the parent: dynamic, static with calibration, or QAT (joulebench.compress.apply).
    Post-training methods have no epochs: their history has none."""
    arrays = store.load_arrays(inputs["splits"])
    model, recipe = load_model(inputs["model"], inputs["recipe"])
    seed_everything(seed)
    settings = training_settings(training, seed, epochs=variant["finetune_epochs"])
    # Post-training int8 runs on the CPU kernels it targets; QAT fine-tunes where its parent was
    # pinned, else on the GPU if any.
    placement = placement_on(recipe.get("device")) if variant["method"] == "int8_qat" else CPU
    prepare_before_window(quantize, variant["method"])  # PT2E methods: Dynamo, traced patterns
    with rule_meter("quantize_model", estimate, placement) as meter:
        model, history, facts = apply.quantize_model(model, variant, arrays, settings, meter)
    log.info("quantization: %s", facts)
    recipe = {**recipe, "quantization": variant["method"]}
    apply.save_quantized(model, recipe, arrays, outputs["model"], outputs["recipe"])
    store.write_csv(outputs["history"], pd.DataFrame(history, columns=None if history else ["epoch"]))
    # A QAT fine-tune trains: its record says under which numeric flags.
    numerics = {"numerics": loop.numeric_flags()} if variant["method"] == "int8_qat" else {}
    store.write_json(outputs["energy"], {**meter.record(), **numerics})


def inference_placement(recipe: dict) -> Placement:
    """Where a model infers: where it would be deployed. An int8 model on the CPU kernels it was
    made for; a float model on the device its variant was pinned to, else on the GPU where there
    is one (in the precision it was trained in)."""
    return CPU if recipe.get("quantization") else placement_on(recipe.get("device"))


def evaluate_variant(inputs: dict, outputs: dict, evaluation: dict, estimate: dict) -> None:
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
    """Every variant of one model and seed in interleaved, shuffled rounds (joulebench.evaluate.compare).

    `inputs` holds `model_<variant>` and `recipe_<variant>` of each of `variants`.
    """
    from joulebench.evaluate.compare import Candidate, compare

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
        rows = compare(candidates, arrays, evaluation, meter, seed)
    store.write_csv(outputs["rounds"], pd.DataFrame(rows))
    protocol = Protocol.from_config(evaluation, accelerator().torch_device.type).describe()
    store.write_json(outputs["energy"], {**meter.record(), "protocol": protocol})


def measure_idle_baseline(inputs: dict, outputs: dict, seconds: float, estimate: dict) -> None:
    """The idle-power record of this host, measured before the experiment's jobs."""
    # The devices the experiment's jobs compute on: the CPU packages and the job's GPU.
    record = measure_idle_power(seconds, EstimateModel(**estimate), accelerator())
    log.info("idle power: %s", record["idle_power_w"] or "not measured (no energy counter here)")
    store.write_json(outputs["idle"], record)
