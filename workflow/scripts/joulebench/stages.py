"""One function per workflow rule: read inputs, do the work under an EnergyMeter, write outputs.

Rule adapters in workflow/scripts/ only unpack Snakemake's object and call one of these.
"""

import logging
import sys
from pathlib import Path

import pandas as pd
import torch

from joulebench import compress, data, io
from joulebench.energy import EnergyMeter, EstimateModel
from joulebench.evaluate import evaluate
from joulebench.models import build_model, load_model, save_model
from joulebench.train import (
    Distillation,
    TrainSettings,
    effective_precision,
    pick_device,
    seed_everything,
    train,
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


def prepare_dataset(dataset: dict, energy_config: dict, splits_path, facts_path, energy_path) -> None:
    with _meter("prepare_dataset", energy_config) as meter, meter.window("load_and_split"):
        images, labels, classes = data.load_source(dataset)
        arrays = data.split_arrays(
            images, labels, dataset["val_fraction"], dataset["test_fraction"], dataset["split_seed"]
        )
    facts = data.describe(arrays, classes)
    log.info("dataset %s: %s", dataset["name"], {k: facts[f"{k}_count"] for k in data.SPLITS})
    io.save_arrays(splits_path, arrays)
    io.write_json(facts_path, facts)
    io.write_json(energy_path, meter.record())


def _settings(training: dict, seed: int, precision: str = "fp32", epochs: int | None = None) -> TrainSettings:
    return TrainSettings(
        epochs=epochs or training["epochs"],
        batch_size=training["batch_size"],
        lr=training["lr"],
        weight_decay=training["weight_decay"],
        precision=precision,
        seed=seed,
    )


def _write_trained(model, recipe, history, meter, out_dir: Path) -> None:
    save_model(model.cpu(), recipe, out_dir)
    io.write_csv(out_dir / "history.csv", pd.DataFrame(history))
    io.write_json(out_dir / "energy.json", meter.record())


def train_variant(
    splits_path, facts_path, model_name, variant, training, seed, energy_config, out_dir
) -> None:
    """Train from scratch: the fp32 baseline or a precision variant."""
    arrays, facts = io.load_arrays(splits_path), io.read_json(facts_path)
    precision = effective_precision(variant.get("precision", "fp32"), pick_device())
    if precision != variant.get("precision", "fp32"):
        log.warning("%s is not supported here; training in %s instead", variant["precision"], precision)
    seed_everything(seed)
    recipe = {
        "arch": model_name,
        "in_channels": facts["channels"],
        "num_classes": facts["num_classes"],
        "precision_requested": variant.get("precision", "fp32"),
        "precision": precision,
    }
    model = build_model(recipe)
    with _meter("train_model", energy_config) as meter:
        history = train(model, arrays, _settings(training, seed, precision), meter)
    _write_trained(model, recipe, history, meter, Path(out_dir))


def distill_variant(splits_path, teacher_dir, variant, training, seed, energy_config, out_dir) -> None:
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
    settings = _settings(training, seed, epochs=variant.get("epochs"))
    with _meter("distill_model", energy_config) as meter:
        history = train(student, arrays, settings, meter, distillation)
    _write_trained(student, recipe, history, meter, Path(out_dir))


def prune_variant(splits_path, parent_dir, variant, training, seed, energy_config, out_dir) -> None:
    """Global magnitude pruning, fine-tuning with masks on, then masks folded in (permanent)."""
    arrays = io.load_arrays(splits_path)
    model, recipe = load_model(parent_dir)
    seed_everything(seed)
    settings = _settings(training, seed, epochs=variant["finetune_epochs"])
    with _meter("prune_model", energy_config) as meter:
        with meter.window("prune"):
            compress.global_magnitude_prune(model, variant["sparsity"])
        history = train(model, arrays, settings, meter)
        compress.make_pruning_permanent(model)
    log.info("weight sparsity after pruning: %.4f", compress.weight_sparsity(model))
    _write_trained(model, {**recipe, "sparsity": variant["sparsity"]}, history, meter, Path(out_dir))


def quantize_variant(parent_dir, variant, energy_config, out_dir) -> None:
    """Post-training quantization of the parent model (no training data needed for dynamic INT8)."""
    model, recipe = load_model(parent_dir)
    with _meter("quantize_model", energy_config) as meter, meter.window("quantize"):
        model = compress.apply_quantization(model.cpu().eval(), variant["method"])
    log.info("int8 linear layers: %d", compress.int8_linear_count(model))
    out_dir = Path(out_dir)
    save_model(model, {**recipe, "quantization": variant["method"]}, out_dir)
    io.write_json(out_dir / "energy.json", meter.record())


def evaluate_variant(splits_path, model_dir, settings, energy_config, metrics_path, energy_path) -> None:
    arrays = io.load_arrays(splits_path)
    model, recipe = load_model(model_dir)
    with _meter("evaluate_model", energy_config) as meter:
        metrics = evaluate(model, arrays, Path(model_dir) / "model.pt", settings, meter)
    metrics["precision"] = recipe.get("precision", "fp32")
    log.info("metrics: %s", metrics)
    io.write_json(metrics_path, metrics)
    io.write_json(energy_path, meter.record())


def aggregate_results(entries, variants, data_energy_path, out_dir) -> None:
    from joulebench.report import build_table, write_report

    table = build_table(entries, variants, io.read_json(data_energy_path))
    summary = write_report(table, out_dir)
    log.info("summary:\n%s", summary.to_string())
