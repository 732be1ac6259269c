"""One function per workflow rule: read inputs, do the work under an EnergyMeter, write outputs.

Rule adapters in workflow/scripts/ only unpack Snakemake's object and call one of these.
"""

import logging
import sys
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from joulebench import compress, data, diversity, io, power_limit
from joulebench.checkpoint import Checkpointer, exit_on_sigterm, file_digest, fingerprint, merge_prior_energy
from joulebench.devices import CPU, Placement, accelerator
from joulebench.energy import EnergyMeter, EstimateModel, measure_idle_power
from joulebench.evaluate import evaluate
from joulebench.lazy import pandas as pd
from joulebench.models import build_model, check_input, freeze_pretrained, load_model, save_model
from joulebench.pretrained import load_weights
from joulebench.protocol import Protocol
from joulebench.quantize import load_reference
from joulebench.recipes import cpu_threads, training_overrides
from joulebench.train import (
    Distillation,
    TrainSettings,
    effective_precision,
    seed_everything,
    train,
    training_summary,
)

log = logging.getLogger(__name__)


def start_rule_logging(log_path, threads: int) -> None:
    """Send stderr and `logging` to the rule's log file; use the threads Snakemake gave the job."""
    stream = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    sys.stderr = stream
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("zeus").setLevel(logging.WARNING)
    torch.set_num_threads(threads)


def _meter(rule: str, energy_config: dict, placement: Placement = CPU) -> EnergyMeter:
    """The rule's meter over the devices it computes on: the CPU unless `placement` says a GPU."""
    return EnergyMeter(rule, EstimateModel(**energy_config["estimate"]), placement)


def prepare_dataset(
    dataset: dict, cleaning: dict, energy_config: dict, splits_path, facts_path, rejected_path, energy_path
) -> None:
    """Load and split the source. With cleaning on, unusable files are listed instead of fatal.

    Image files are decoded in as many threads as the job was given (torch's thread count).
    """
    with _meter("prepare_dataset", energy_config) as meter, meter.window("load_and_split"):
        source = data.load_source(dataset, skip_unusable=cleaning["enabled"], workers=torch.get_num_threads())
        arrays = data.split_arrays(
            source.images,
            source.labels,
            dataset["val_fraction"],
            dataset["test_fraction"],
            dataset["split_seed"],
            source.classes,
        )
    facts = data.describe(arrays, source.classes)
    log.info("dataset %s: %s", dataset["name"], {k: facts[f"{k}_count"] for k in data.SPLITS})
    # Names let the cleaning report point at the file (or source index) of every removed image.
    names = np.asarray(source.names, dtype=str)
    io.save_arrays(splits_path, {**arrays, "item_names": names, "pixel_max": np.asarray(source.pixel_max)})
    io.write_json(facts_path, facts)
    columns = ["item", "reason", "detail"]
    io.write_csv(rejected_path, pd.DataFrame(source.rejected, columns=columns))
    io.write_json(energy_path, meter.record())


def clean_dataset(
    raw_splits_path, raw_facts_path, rejected_path, cleaning: dict, energy_config: dict, out: dict
) -> None:
    """Drop duplicates, leaks and conflicting labels; report every removed item with its reason.

    `out` holds the paths splits, facts, report, removed, energy.
    """
    from joulebench import clean

    raw = dict(io.open_arrays(raw_splits_path))
    names = [str(name) for name in raw.pop("item_names")]
    classes = io.read_json(raw_facts_path)["classes"]
    settings = {k: v for k, v in cleaning.items() if k != "examples_per_reason"}
    chosen = {}
    with _meter("clean_dataset", energy_config) as meter, meter.window("find_duplicates"):
        if cleaning["enabled"]:
            arrays, removed = clean.clean_splits(raw, names, settings, torch.get_num_threads(), chosen)
        else:
            arrays, removed = raw, []
    # Files the loader could not use were left out before the split; they are removed items too.
    for rejected in pd.read_csv(rejected_path).to_dict("records"):
        removed.append({"split": "source", **rejected})
    report = clean.cleaning_report(raw, arrays, removed, settings, cleaning["examples_per_reason"])
    report["near_duplicate_thresholds"] = chosen or None
    # Diversity of the training split before and after cleaning (the seed's D1 >= D0).
    num_classes = len(classes)
    report["diversity"] = {
        name: diversity.diversity(splits["train_x"], splits["train_y"], num_classes)
        for name, splits in (("raw", raw), ("cleaned", arrays))
    }
    report["throughput_images_per_s"] = sum(report["before"][s]["count"] for s in data.SPLITS) / max(
        meter.record()["wall_time_s"], 1e-9
    )
    log.info("removed %d images: %s", len(removed), report["removed_by_reason"])
    io.save_arrays(out["splits"], {**arrays, "item_names": np.asarray(names, dtype=str)})
    io.write_json(out["facts"], data.describe(arrays, classes))
    io.write_json(out["report"], report)
    io.write_csv(out["removed"], clean.removed_frame(removed))
    io.write_json(out["energy"], meter.record())


def sample_dataset(
    splits_path, facts_path, variant: dict, training: dict, seed: int, energy_config: dict, out: dict
) -> None:
    """A training subset by `variant["method"]`; the proxy run of a scoring method is metered here.

    `out` holds the paths splits, summary, energy.
    """
    from joulebench import sample

    arrays, facts = io.open_arrays(splits_path), io.read_json(facts_path)
    labels, fraction, method = arrays["train_y"], variant["fraction"], variant["method"]
    summary = {"method": method, "fraction": fraction, "seed": seed}
    # A scoring method trains a proxy model: on the GPU where there is one.
    placement = CPU if method in ("random", "stratified") else accelerator()
    with _meter("sample_dataset", energy_config, placement) as meter:
        if method == "random":
            chosen = sample.random_subset(labels, fraction, seed)
        elif method == "stratified":
            chosen = sample.stratified_subset(labels, fraction, seed)
        else:
            seed_everything(seed)
            recipe = {
                "arch": variant["proxy_model"],
                "in_channels": facts["channels"],
                "num_classes": facts["num_classes"],
                "precision": "fp32",
            }
            proxy = build_model(recipe)
            history = train(proxy, arrays, _settings(training, seed, epochs=variant["proxy_epochs"]), meter)
            with meter.window("score"):
                scores = sample.el2n_scores(proxy, arrays)
            chosen = sample.highest_scores(scores, fraction)
            summary["proxy"] = {**recipe, "epochs": variant["proxy_epochs"], "history": history}
            summary["score_kept_min"] = float(scores[chosen].min())
            summary["score_all_median"] = float(np.median(scores))
    subset = sample.take_train_subset(arrays, chosen)
    summary["before"] = sample.class_balance(labels, facts["num_classes"])
    summary["after"] = sample.class_balance(subset["train_y"], facts["num_classes"])
    summary["diversity"] = {
        "cleaned": diversity.diversity(arrays["train_x"], labels, facts["num_classes"]),
        "sampled": diversity.diversity(subset["train_x"], subset["train_y"], facts["num_classes"]),
    }
    log.info("subset %s: %d of %d training images", method, len(chosen), len(labels))
    io.save_arrays(out["splits"], subset)
    io.write_json(out["summary"], summary)
    io.write_json(out["energy"], meter.record())


def plot_augmentation(splits_path, augmentation: dict, png_path) -> None:
    """A figure of training images and their augmentations (the first images of the split)."""
    from joulebench import augment

    images = io.load_arrays(splits_path)["train_x"][: augmentation["figure_samples"]]
    augment.plot_samples(images, augmentation["transforms"], seed=0, path=png_path)


def augment_dataset(
    splits_path, augmentation: dict, seed: int, energy_config: dict, out_path, energy_path
) -> None:
    """Offline augmentation: the splits with `materialize_copies` augmented copies of train appended."""
    from joulebench import augment

    arrays = io.load_arrays(splits_path)
    with _meter("augment_dataset", energy_config) as meter, meter.window("augment"):
        augmented = augment.materialize(
            arrays, augmentation["transforms"], augmentation["materialize_copies"], seed
        )
    log.info("training images: %d -> %d", len(arrays["train_y"]), len(augmented["train_y"]))
    io.save_arrays(out_path, augmented)
    io.write_json(energy_path, meter.record())


def _settings(training: dict, seed: int, precision: str = "fp32", epochs: int | None = None) -> TrainSettings:
    return TrainSettings(
        epochs=epochs or training["epochs"],
        batch_size=training["batch_size"],
        lr=training["lr"],
        weight_decay=training["weight_decay"],
        precision=precision,
        seed=seed,
        channels_last=training.get("channels_last", False),
        compile=training.get("compile", False),
        loader_workers=training.get("loader_workers", 0),
    )


def _write_trained(model, recipe, history, meter, out_dir: Path) -> None:
    save_model(model.cpu(), recipe, out_dir)
    io.write_csv(out_dir / "history.csv", pd.DataFrame(history))
    io.write_json(out_dir / "energy.json", meter.record())


def _train_resumably(
    rule,
    model,
    recipe,
    arrays,
    settings,
    energy_config,
    out_dir,
    checkpoint_path,
    facts,
    distillation=None,
    conditions=None,
):
    """Train with per-epoch checkpoints; write model, history.csv, energy.json and training.json.

    `facts` (data and teacher digests) and the recipe and settings make the checkpoint's
    fingerprint. The energy record sums this attempt and the checkpointed epochs of earlier ones.
    `conditions`: a context manager holding a hardware setting for the whole run (a GPU power
    limit, joulebench.power_limit), entered inside the SIGTERM handler so it is undone on
    preemption too; the facts of what it held go into energy.json and training.json, as does the
    CPU thread count.
    """
    out_dir = Path(out_dir)
    run_facts = {**facts, "recipe": recipe, "settings": asdict(settings)}
    checkpointer = Checkpointer(checkpoint_path, fingerprint(run_facts)) if checkpoint_path else None
    with exit_on_sigterm():
        with conditions or nullcontext() as limit:
            with _meter(rule, energy_config, accelerator()) as meter:
                callback = limit.callback(meter) if limit else None
                history = train(model, arrays, settings, meter, distillation, checkpointer, callback)
            held = {**(limit.facts() if limit else {}), "cpu_threads": torch.get_num_threads()}
        resumed_after = checkpointer.resumed_after_epoch if checkpointer else 0
        record = merge_prior_energy(
            meter.record(), checkpointer.prior_windows if checkpointer else [], resumed_after
        )
        record |= held
        summary = {
            **training_summary(history, settings),
            "precision_requested": recipe.get("precision_requested", settings.precision),
            "resumed_after_epoch": resumed_after or None,
            "pretrained": recipe.get("pretrained"),
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            **held,
        }
        save_model(model.cpu(), recipe, out_dir)
        io.write_csv(out_dir / "history.csv", pd.DataFrame(history))
        io.write_json(out_dir / "energy.json", record)
        io.write_json(out_dir / "training.json", summary)
    if checkpointer:
        checkpointer.remove()


def train_variant(
    splits_path,
    facts_path,
    model_name,
    variant,
    training,
    seed,
    energy_config,
    out_dir,
    checkpoint_path=None,
    augmentation=None,
    pretrained=None,
) -> None:
    """Train from scratch (the fp32 baseline, a precision or subset variant), or fine-tune a
    pretrained model (technique finetune; `pretrained` holds the model's `weights` and `download`).

    A precision the device cannot compute in runs as the precision autocast really uses there
    (fp16 -> bf16 on a CPU without fp16 autocast); the recipe and training.json name both.
    A data_parallel variant starts its workers here, which write the outputs
    (joulebench.data_parallel).
    """
    if variant.get("technique") == "data_parallel":
        from joulebench.data_parallel import launch_training

        spec = {
            "splits": str(splits_path),
            "facts": str(facts_path),
            "model": model_name,
            "variant": variant,
            "training": training,
            "seed": seed,
            "energy": energy_config,
            "augmentation": augmentation or {},
            "out_dir": str(out_dir),
        }
        launch_training(spec, variant["processes"])
        return
    placement = accelerator()
    if variant.get("technique") == "power_limit" and placement.gpu is None:
        write_skipped(out_dir, "train_model", power_limit.NO_GPU)
        return
    threads = cpu_threads(variant)
    if threads is not None:
        torch.set_num_threads(threads)
    arrays, facts = io.load_arrays(splits_path), io.read_json(facts_path)
    requested = variant.get("precision", "fp32")
    precision = effective_precision(requested, placement.torch_device)
    if precision != requested:
        log.warning("%s is not supported here; training in %s instead", requested, precision)
    seed_everything(seed)
    recipe = training_recipe(model_name, facts, requested, precision)
    model = _initial_model(recipe, variant, pretrained)
    check_input(model, model_name, (facts["channels"], *facts["image_size"]), facts["num_classes"])
    settings = replace(
        _settings(training, seed, precision, epochs=variant.get("epochs")),
        target_val_accuracy=training.get("target_val_accuracy"),
        augmentation=tuple((augmentation or {}).get("transforms", [])),
        **training_overrides(variant, training),
    )
    data_facts = {"splits": file_digest(splits_path)}
    if variant.get("technique") == "power_limit":
        data_facts["power_limit"] = {k: v for k, v in variant.items() if k != "technique"}
        conditions = power_limit.held_power_limit(placement, variant)
    else:
        conditions = None
    _train_resumably(
        "train_model",
        model,
        recipe,
        arrays,
        settings,
        energy_config,
        out_dir,
        checkpoint_path,
        data_facts,
        conditions=conditions,
    )


def training_recipe(model_name: str, facts: dict, requested: str, precision: str) -> dict:
    """The recipe of a from-scratch model: architecture, data shape, precision asked and used."""
    return {
        "arch": model_name,
        "in_channels": facts["channels"],
        "num_classes": facts["num_classes"],
        "image_size": facts["image_size"],
        "precision_requested": requested,
        "precision": precision,
    }


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


def write_skipped(out_dir, rule: str, reason: str) -> None:
    """The outputs of a training rule whose variant cannot run on this host, each saying why.

    The DAG is fixed before any job runs and cannot know the host a job lands on, so the rule still
    makes its outputs: model.json, training.json and energy.json say `skipped`, model.pt is empty,
    evaluation passes the marker on, and the report lists the variant instead of a result.
    """
    out_dir = Path(out_dir)
    marker = {"skipped": reason, "rule": rule}
    log.warning("%s skipped: %s", rule, reason)
    io.write_atomic(out_dir / "model.pt", lambda tmp: Path(tmp).write_bytes(b""))
    for name in ("model.json", "training.json", "energy.json"):
        io.write_json(out_dir / name, marker)
    io.write_csv(out_dir / "history.csv", pd.DataFrame(columns=["epoch"]))


def distill_variant(
    splits_path, teacher_dir, variant, training, seed, energy_config, out_dir, checkpoint_path=None
) -> None:
    """Train a smaller student against the teacher's soft targets (teacher forwards are metered)."""
    arrays = io.load_arrays(splits_path)
    teacher, teacher_recipe = load_model(teacher_dir)
    seed_everything(seed)
    recipe = {
        "arch": variant.get("student_arch", teacher_recipe["arch"]),
        "in_channels": teacher_recipe["in_channels"],
        "num_classes": teacher_recipe["num_classes"],
        "image_size": teacher_recipe.get("image_size"),
        "width": variant["student_width"],
        "precision": "fp32",
    }
    student = build_model(recipe)
    distillation = Distillation(teacher, variant["temperature"], variant["alpha"])
    settings = replace(
        _settings(training, seed, epochs=variant.get("epochs")),
        target_val_accuracy=training.get("target_val_accuracy"),
    )
    facts = {
        "splits": file_digest(splits_path),
        "teacher": file_digest(Path(teacher_dir) / "model.pt"),
        "distillation": [variant["temperature"], variant["alpha"]],
    }
    _train_resumably(
        "distill_model",
        student,
        recipe,
        arrays,
        settings,
        energy_config,
        out_dir,
        checkpoint_path,
        facts,
        distillation,
    )


def prune_variant(splits_path, parent_dir, variant, training, seed, energy_config, out_dir) -> None:
    """Unstructured (masks made permanent) or channel pruning of the parent, fine-tuned; see compress."""
    arrays = io.load_arrays(splits_path)
    model, recipe = load_model(parent_dir)
    seed_everything(seed)
    settings = _settings(training, seed, epochs=variant["finetune_epochs"])
    with _meter("prune_model", energy_config, accelerator()) as meter:
        model, history, facts = compress.prune_model(model, variant, arrays, settings, meter)
    out_dir = Path(out_dir)
    _write_trained(model, {**recipe, "pruning": {**variant, **facts}}, history, meter, out_dir)


def quantize_variant(splits_path, parent_dir, variant, training, seed, energy_config, out_dir) -> None:
    """INT8 quantization of the parent: dynamic, static with calibration, or QAT (joulebench.compress)."""
    arrays = io.load_arrays(splits_path)
    model, recipe = load_model(parent_dir)
    seed_everything(seed)
    settings = _settings(training, seed, epochs=variant.get("finetune_epochs", 1))
    # Post-training int8 runs on the CPU kernels it targets; QAT fine-tunes on the GPU if any.
    placement = accelerator() if variant["method"] == "int8_qat" else CPU
    with _meter("quantize_model", energy_config, placement) as meter:
        model, history, facts = compress.quantize_model(model, variant, arrays, settings, meter)
    log.info("quantization: %s", facts)
    out_dir = Path(out_dir)
    compress.save_quantized(model, {**recipe, "quantization": variant["method"]}, arrays, out_dir)
    if history:  # QAT fine-tunes; post-training methods have no epochs
        io.write_csv(out_dir / "history.csv", pd.DataFrame(history))
    io.write_json(out_dir / "energy.json", meter.record())


def evaluate_variant(splits_path, model_dir, settings, energy_config, metrics_path, energy_path) -> None:
    skipped = io.read_json(Path(model_dir) / "model.json").get("skipped")
    if skipped:  # a variant this host could not run (write_skipped): pass the marker on
        for path in (metrics_path, energy_path):
            io.write_json(path, {"skipped": skipped, "rule": "evaluate_model"})
        return
    arrays = io.load_arrays(splits_path)
    model, recipe = load_model(model_dir)
    artifact = Path(model_dir) / "model.pt"
    # A lowered int8 graph calls fused kernels; count parameters and MACs on its reference graph.
    reference = load_reference(artifact)[0] if recipe.get("format") == "torch.export" else None
    # Inference runs where the model would be deployed: a float model on the GPU where there is
    # one, in the precision it was trained in; an int8 model on the CPU kernels it was made for.
    placement = CPU if recipe.get("quantization") else accelerator()
    with _meter("evaluate_model", energy_config, placement) as meter:
        metrics = evaluate(
            model, arrays, artifact, settings, meter, reference, recipe.get("precision", "fp32")
        )
    metrics["precision"] = recipe.get("precision", "fp32")
    log.info("metrics: %s", metrics)
    io.write_json(metrics_path, metrics)
    io.write_json(energy_path, {**meter.record(), "protocol": metrics["protocol"]})


def compare_inference(splits_path, model_dirs: dict, settings, energy_config, seed, rounds_path, energy_path):
    """Every variant of one model and seed in interleaved, shuffled rounds (joulebench.compare).

    `model_dirs`: variant -> the folder of its model.pt and model.json.
    """
    from joulebench.compare import Candidate, compare

    arrays = io.load_arrays(splits_path)
    candidates = {}
    for variant, directory in model_dirs.items():
        if io.read_json(Path(directory) / "model.json").get("skipped"):
            continue  # a variant this host cannot run (write_skipped): nothing to compare
        model, recipe = load_model(directory)
        placement = CPU if recipe.get("quantization") else accelerator()
        candidates[variant] = Candidate(model, placement, recipe.get("precision", "fp32"))
    with _meter("compare_inference", energy_config, accelerator()) as meter:
        rows = compare(candidates, arrays, settings, meter, seed)
    io.write_csv(rounds_path, pd.DataFrame(rows))
    protocol = Protocol.from_config(settings, accelerator().torch_device.type).describe()
    io.write_json(energy_path, {**meter.record(), "protocol": protocol})


def measure_idle_baseline(seconds: float, energy_config: dict, idle_path) -> None:
    """The idle-power record of this host, measured before the experiment's jobs."""
    # The devices the experiment's jobs compute on: the CPU packages and the job's GPU.
    record = measure_idle_power(seconds, EstimateModel(**energy_config["estimate"]), accelerator())
    log.info("idle power: %s", record["idle_power_w"] or "not measured (no energy counter here)")
    io.write_json(idle_path, record)


def aggregate_results(
    entries,
    variants,
    data_energy_path,
    out_dir,
    energy_config=None,
    idle_path=None,
    report_settings=None,
    diversity_paths=(),
) -> None:
    from joulebench.report import (
        build_table,
        read_diversity,
        read_histories,
        read_rounds,
        split_skipped,
        write_report,
    )

    idle = io.read_json(idle_path) if idle_path else None
    entries, skipped = split_skipped(entries)
    table = build_table(entries, variants, io.read_json(data_energy_path), energy_config, idle)
    histories = read_histories(entries, table)
    compare_records = [io.read_json(e["compare_energy"]) for e in entries if "compare_energy" in e]
    protocol = compare_records[0]["protocol"] if compare_records else None
    rounds = read_rounds(entries)
    summary = write_report(
        table,
        histories,
        report_settings or {},
        out_dir,
        rounds,
        protocol,
        skipped,
        read_diversity(diversity_paths),
    )
    log.info("summary:\n%s", summary.to_string())
