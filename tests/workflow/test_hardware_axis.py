"""The hardware axis without hardware: batch-size learning rates, thread counts, config checks, and
the report's constrained decision, time-energy cost, time-vs-energy figure and skipped runs,
each checked against arithmetic done by hand."""

import pandas as pd
import pytest
from PIL import Image

from conftest import tiny_config
from joulebench import store
from joulebench.config import ConfigError, check_config, resolved_config
from joulebench.report import figures
from joulebench.report.aggregate import split_skipped
from joulebench.report.decisions import hardware_decisions, time_energy_cost
from joulebench.report.summary import hardware_decisions_markdown, skipped_markdown
from joulebench.train.overrides import cpu_threads, scaled_lr, training_overrides

TRAINING = {"epochs": 1, "batch_size": 64, "lr": 0.003}


def test_linear_and_sqrt_learning_rate_scaling():
    # 256 / 64 = 4: linear x4, sqrt x2; 16 / 64 = 1/4: linear x0.25, sqrt x0.5.
    assert scaled_lr(0.003, 64, 256, "linear") == pytest.approx(0.012)
    assert scaled_lr(0.003, 64, 256, "sqrt") == pytest.approx(0.006)
    assert scaled_lr(0.003, 64, 16, "linear") == pytest.approx(0.00075)
    assert scaled_lr(0.003, 64, 16, "sqrt") == pytest.approx(0.0015)
    assert scaled_lr(0.003, 64, 64, "sqrt") == pytest.approx(0.003)


def test_only_a_batch_size_variant_changes_the_training_recipe():
    variant = {"technique": "batch_size", "batch_size": 128, "lr_scaling": "sqrt"}
    assert training_overrides(variant, TRAINING) == {"batch_size": 128, "lr": pytest.approx(0.003 * 2**0.5)}
    assert training_overrides({"technique": "precision", "precision": "bf16"}, TRAINING) == {}
    assert training_overrides({"technique": "threads", "threads": 1}, TRAINING) == {}


def test_threads_only_for_a_threads_variant():
    assert cpu_threads({"technique": "threads", "threads": 1}) == 1
    assert cpu_threads({"technique": "batch_size", "batch_size": 8}) is None
    assert cpu_threads({}) is None


def test_nothing_can_start_from_a_power_limit_variant():
    variants = {
        "pl250": {"technique": "power_limit", "power_limit_w": 250},
        "prune_pl": {"technique": "prune", "sparsity": 0.5, "finetune_epochs": 1, "from": "pl250"},
    }
    config = tiny_config(variants=variants, augmentation={"transforms": []})
    with pytest.raises(ConfigError, match=r"variants.prune_pl.from: pl250 needs a GPU \(power_limit\)"):
        check_config(resolved_config(config))


# (variant) -> (energy to produce J, wall time to produce s, accuracy, latency p95 ms)
HAND = {
    "baseline": (100.0, 50.0, 0.95, 1.5),
    "bs256": (80.0, 70.0, 0.94, 1.5),
    "threads1": (60.0, 120.0, 0.95, 2.5),
    "pl250": (90.0, 55.0, 0.96, 1.4),
}


@pytest.fixture
def summary():
    rows = [
        {
            "dataset": "digits",
            "model": "small_cnn",
            "variant": variant,
            "n": 1,
            "test_accuracy": accuracy,
            "test_accuracy_ci95": None,
            "pipeline_energy_j": energy,
            "pipeline_energy_j_ci95": None,
            "pipeline_wall_time_s": wall,
            "pipeline_wall_time_s_ci95": None,
            "pipeline_energy_measured": False,
            "latency_p95_ms": latency,
        }
        for variant, (energy, wall, accuracy, latency) in HAND.items()
    ]
    return pd.DataFrame(rows)


def test_least_energy_within_constraints_names_who_was_eligible_and_why_not(summary):
    settings = {"constraints": {"wall_time_s": 60, "latency_p95_ms": 2}}
    decision = hardware_decisions(summary, settings)["constraints"]
    # baseline (50 s, 1.5 ms) and pl250 (55 s, 1.4 ms) meet both bounds; pl250 needs 90 J < 100 J.
    assert [(r["variant"], r["pipeline_energy_j"]) for r in decision["cheapest_meeting_constraints"]] == [
        ("pl250", 90.0)
    ]
    assert decision["cheapest_meeting_constraints"][0]["pipeline_wall_time_s"] == 55.0
    assert [v["variant"] for v in decision["eligible"]] == ["baseline", "pl250"]
    reasons = {v["variant"]: v["reasons"] for v in decision["ineligible"]}
    assert reasons == {
        "bs256": ["wall_time_s 70 > 60"],
        "threads1": ["wall_time_s 120 > 60", "latency_p95_ms 2.5 > 2"],
    }
    lines = "\n".join(hardware_decisions_markdown({"constraints": decision}))
    assert "wall_time_s <= 60, latency_p95_ms <= 2: **small_cnn/pl250**, 90.0 J" in lines
    assert "Not eligible: small_cnn/threads1 (wall_time_s 120 > 60; latency_p95_ms 2.5 > 2)" in lines


def test_no_variant_meeting_the_constraints_is_said(summary):
    decision = hardware_decisions(summary, {"constraints": {"wall_time_s": 10}})["constraints"]
    assert decision["cheapest_meeting_constraints"] == [] and decision["eligible"] == []
    assert "**No variant meets wall_time_s <= 10**" in "\n".join(
        hardware_decisions_markdown({"constraints": decision})
    )


def test_time_energy_cost_by_hand(summary):
    # eta 0.5, MaxPower 2 W: cost = 0.5 E + 0.5 x 2 x T = 0.5 E + T.
    # baseline 50 + 50 = 100, bs256 40 + 70 = 110, threads1 30 + 120 = 150, pl250 45 + 55 = 100.
    cost = hardware_decisions(summary, {"eta": 0.5, "max_power_w": 2.0})["time_energy_cost"]
    ranking = [(r["variant"], r["time_energy_cost_j"]) for r in cost["ranking"]]
    assert ranking == [("baseline", 100.0), ("pl250", 100.0), ("bs256", 110.0), ("threads1", 150.0)]
    assert [r["variant"] for r in cost["lowest_cost"]] == ["baseline", "pl250"]  # a tie: both
    # eta = 1 is energy alone; eta = 0 is time alone, priced at MaxPower.
    energy_only = hardware_decisions(summary, {"eta": 1.0, "max_power_w": 2.0})["time_energy_cost"]
    assert [r["variant"] for r in energy_only["lowest_cost"]] == ["threads1"]
    time_only = hardware_decisions(summary, {"eta": 0.0, "max_power_w": 2.0})["time_energy_cost"]
    assert [(r["variant"], r["time_energy_cost_j"]) for r in time_only["lowest_cost"]] == [
        ("baseline", 100.0)
    ]
    assert time_energy_cost(10.0, 3.0, 0.25, 100.0) == pytest.approx(0.25 * 10 + 0.75 * 100 * 3)
    text = "\n".join(hardware_decisions_markdown({"time_energy_cost": cost}))
    assert "cost = eta x E + (1 - eta) x MaxPower x T with eta = 0.5, MaxPower = 2 W" in text


def test_decisions_are_absent_when_not_configured(summary):
    assert hardware_decisions(summary, {}) == {"constraints": None, "time_energy_cost": None}
    assert hardware_decisions_markdown({"constraints": None, "time_energy_cost": None}) == []


def test_skipped_runs_are_split_off_and_listed_once_per_variant(tmp_path):
    entries = []
    for variant, record in (("baseline", {"rule": "train_model", "joules": 1.0}), ("pl250", None)):
        for seed in (0, 1):
            path = tmp_path / variant / f"seed{seed}" / "energy.json"
            store.write_json(path, record or {"skipped": "no GPU on this host", "rule": "train_model"})
            entries.append(
                {
                    "dataset": "digits",
                    "model": "small_cnn",
                    "variant": variant,
                    "seed": seed,
                    "energy": str(path),
                }
            )
    kept, skipped = split_skipped(entries)
    assert [(e["variant"], e["seed"]) for e in kept] == [("baseline", 0), ("baseline", 1)]
    assert [(s["variant"], s["seed"], s["reason"]) for s in skipped] == [
        ("pl250", 0, "no GPU on this host"),
        ("pl250", 1, "no GPU on this host"),
    ]
    assert skipped_markdown(skipped) == [
        "## Skipped",
        "",
        "- pl250: skipped, no GPU on this host (small_cnn, seeds 0, 1).",
        "",
    ]
    assert skipped_markdown([]) == []


def test_time_vs_energy_figure_has_a_panel_per_model_as_pdf_and_300_dpi_png(summary, tmp_path):
    two_models = pd.concat([summary, summary.assign(model="resnet18")], ignore_index=True)
    files = [tmp_path / "time_vs_energy.pdf", tmp_path / "time_vs_energy.png"]
    assert figures.plot_time_vs_energy(two_models, files) == files
    assert files[0].read_bytes().startswith(b"%PDF")
    with Image.open(files[1]) as png:
        assert round(png.info["dpi"][0]) == 300
        assert png.width > 2.5 * 300  # about one 3.5 in column at 300 dpi
