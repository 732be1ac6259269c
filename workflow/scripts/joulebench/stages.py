"""One function per workflow rule: read inputs, do the work under an EnergyMeter, write outputs.

Rule adapters in workflow/scripts/ only unpack Snakemake's object and call one of these.
"""

import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from joulebench import compress, data, diversity, io
from joulebench.checkpoint import Checkpointer, exit_on_sigterm, file_digest, fingerprint, merge_prior_energy
from joulebench.energy import EnergyMeter, EstimateModel, measure_idle_power
from joulebench.evaluate import evaluate
from joulebench.models import build_model, load_model, save_model
from joulebench.quantize import load_reference
from joulebench.train import (
    Distillation,
    TrainSettings,
    effective_precision,
    pick_device,
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


def _meter(rule: str, energy_config: dict) -> EnergyMeter:
    return EnergyMeter(rule, EstimateModel(**energy_config["estimate"]))


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
    with _meter("sample_dataset", energy_config) as meter:
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
    rule, model, recipe, arrays, settings, energy_config, out_dir, checkpoint_path, facts, distillation=None
):
    """Train with per-epoch checkpoints; write model, history.csv, energy.json and training.json.

    `facts` (data and teacher digests) and the recipe and settings make the checkpoint's
    fingerprint. The energy record sums this attempt and the checkpointed epochs of earlier ones.
    """
    out_dir = Path(out_dir)
    run_facts = {**facts, "recipe": recipe, "settings": asdict(settings)}
    checkpointer = Checkpointer(checkpoint_path, fingerprint(run_facts)) if checkpoint_path else None
    with exit_on_sigterm():
        with _meter(rule, energy_config) as meter:
            history = train(model, arrays, settings, meter, distillation, checkpointer)
        resumed_after = checkpointer.resumed_after_epoch if checkpointer else 0
        record = merge_prior_energy(
            meter.record(), checkpointer.prior_windows if checkpointer else [], resumed_after
        )
        summary = {
            **training_summary(history, settings),
            "precision_requested": recipe.get("precision_requested", settings.precision),
            "resumed_after_epoch": resumed_after or None,
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
) -> None:
    """Train from scratch: the fp32 baseline or a precision variant.

    A precision the device cannot compute in runs as the precision autocast really uses there
    (fp16 -> bf16 on a CPU without fp16 autocast); the recipe and training.json name both.
    """
    arrays, facts = io.load_arrays(splits_path), io.read_json(facts_path)
    requested = variant.get("precision", "fp32")
    precision = effective_precision(requested, pick_device())
    if precision != requested:
        log.warning("%s is not supported here; training in %s instead", requested, precision)
    seed_everything(seed)
    recipe = {
        "arch": model_name,
        "in_channels": facts["channels"],
        "num_classes": facts["num_classes"],
        "precision_requested": requested,
        "precision": precision,
    }
    model = build_model(recipe)
    settings = replace(
        _settings(training, seed, precision),
        target_val_accuracy=training.get("target_val_accuracy"),
        augmentation=tuple((augmentation or {}).get("transforms", [])),
    )
    data_facts = {"splits": file_digest(splits_path)}
    _train_resumably(
        "train_model", model, recipe, arrays, settings, energy_config, out_dir, checkpoint_path, data_facts
    )


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
    with _meter("prune_model", energy_config) as meter:
        model, history, facts = compress.prune_model(model, variant, arrays, settings, meter)
    out_dir = Path(out_dir)
    _write_trained(model, {**recipe, "pruning": {**variant, **facts}}, history, meter, out_dir)


def quantize_variant(splits_path, parent_dir, variant, training, seed, energy_config, out_dir) -> None:
    """INT8 quantization of the parent: dynamic, static with calibration, or QAT (joulebench.compress)."""
    arrays = io.load_arrays(splits_path)
    model, recipe = load_model(parent_dir)
    seed_everything(seed)
    settings = _settings(training, seed, epochs=variant.get("finetune_epochs", 1))
    with _meter("quantize_model", energy_config) as meter:
        model, history, facts = compress.quantize_model(model, variant, arrays, settings, meter)
    log.info("quantization: %s", facts)
    out_dir = Path(out_dir)
    compress.save_quantized(model, {**recipe, "quantization": variant["method"]}, arrays, out_dir)
    if history:  # QAT fine-tunes; post-training methods have no epochs
        io.write_csv(out_dir / "history.csv", pd.DataFrame(history))
    io.write_json(out_dir / "energy.json", meter.record())


def evaluate_variant(splits_path, model_dir, settings, energy_config, metrics_path, energy_path) -> None:
    arrays = io.load_arrays(splits_path)
    model, recipe = load_model(model_dir)
    artifact = Path(model_dir) / "model.pt"
    # A lowered int8 graph calls fused kernels; count parameters and MACs on its reference graph.
    reference = load_reference(artifact)[0] if recipe.get("format") == "torch.export" else None
    with _meter("evaluate_model", energy_config) as meter:
        metrics = evaluate(model, arrays, artifact, settings, meter, reference)
    metrics["precision"] = recipe.get("precision", "fp32")
    log.info("metrics: %s", metrics)
    io.write_json(metrics_path, metrics)
    io.write_json(energy_path, meter.record())


def measure_idle_baseline(seconds: float, energy_config: dict, idle_path) -> None:
    """The idle-power record of this host, measured before the experiment's jobs."""
    record = measure_idle_power(seconds, EstimateModel(**energy_config["estimate"]))
    log.info("idle power: %s", record["idle_power_w"] or "not measured (no energy counter here)")
    io.write_json(idle_path, record)


def aggregate_results(
    entries, variants, data_energy_path, out_dir, energy_config=None, idle_path=None, report_settings=None
) -> None:
    from joulebench.report import build_table, read_histories, write_report

    idle = io.read_json(idle_path) if idle_path else None
    table = build_table(entries, variants, io.read_json(data_energy_path), energy_config, idle)
    histories = read_histories(entries, table)
    summary = write_report(table, histories, report_settings or {}, out_dir)
    log.info("summary:\n%s", summary.to_string())
