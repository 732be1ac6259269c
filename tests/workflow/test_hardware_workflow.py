"""The hardware axis in one real workflow run on this host: batch size, CPU threads and a GPU power
limit as variants of the DAG, and the report's constraints, time-energy cost and skipped list."""

import json

import pandas as pd
import pytest
import torch

from conftest import run_snakemake, tiny_config

pytestmark = pytest.mark.slow

# Without a GPU the power-limit variant must come back as one "skipped" line, not an error.
NO_GPU = not torch.cuda.is_available()


def test_hardware_variants_train_and_reach_the_report(tmp_path):
    variants = {
        "bs128": {"technique": "batch_size", "batch_size": 128, "lr_scaling": "linear"},
        "threads1": {"technique": "threads", "threads": 1},
    }
    if NO_GPU:
        variants["pl250"] = {"technique": "power_limit", "power_limit_w": 250}
        # A GPU-pinned variant is skipped the same way, never trained on the CPU instead.
        variants["gpu_only"] = {"technique": "device", "device": "cuda"}
    report = {
        "accuracy_target": 0.5,
        "constraints": {"wall_time_s": 3600, "latency_p95_ms": 1000},
        "eta": 0.5,
        "max_power_w": 100,
    }
    config = tiny_config(variants=variants, report=report, augmentation={"transforms": []})
    run_snakemake(tmp_path, config)
    models = tmp_path / "results" / "models" / "digits" / "small_cnn"
    batch = json.loads((models / "bs128" / "seed0" / "training.json").read_text())
    assert batch["batch_size"] == 128
    assert batch["lr"] == pytest.approx(config["training"]["lr"] * 2)  # linear: 128 / 64
    threads = json.loads((models / "threads1" / "seed0" / "training.json").read_text())
    assert threads["cpu_threads"] == 1
    assert json.loads((models / "threads1" / "seed0" / "energy.json").read_text())["cpu_threads"] == 1

    out = tmp_path / "results" / "report"
    table = pd.read_csv(out / "results.csv")
    assert set(table["variant"]) == {"baseline", "bs128", "threads1"}
    assert (table["pipeline_wall_time_s"] > table["own_wall_time_s"]).all()
    for suffix in ("pdf", "png"):
        assert (out / f"time_vs_energy.{suffix}").stat().st_size > 0
    decisions = json.loads((out / "decisions.json").read_text())
    assert len(decisions["constraints"]["eligible"]) == 3
    assert len(decisions["time_energy_cost"]["ranking"]) == 3
    summary = (out / "summary.md").read_text()
    assert "Lowest time-energy cost (Zeus), cost = eta x E + (1 - eta) x MaxPower x T" in summary
    if NO_GPU:
        assert json.loads((models / "pl250" / "seed0" / "energy.json").read_text())["skipped"]
        assert "- pl250: skipped, no GPU on this host (small_cnn, seed 0)." in summary
        assert json.loads((models / "gpu_only" / "seed0" / "model.json").read_text())["skipped"]
        assert "- gpu_only: skipped, no GPU on this host (small_cnn, seed 0)." in summary
        assert sorted(s["variant"] for s in decisions["skipped"]) == ["gpu_only", "pl250"]
        # Every row trained on this host's CPU: no cross-device comparison.
        assert set(table["training_device"]) == {"cpu"} and "Across devices" not in summary
