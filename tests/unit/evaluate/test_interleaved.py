"""The interleaved inference comparison: randomised rounds, paired per-round statistics, protocol."""

import statistics

import pandas as pd
import pytest
import torch
from scipy import stats

from joulebench.devices import CPU, Placement
from joulebench.energy.meter import EnergyMeter
from joulebench.evaluate.interleaved import Candidate, device_joules, interleaved_rounds
from joulebench.evaluate.protocol import (
    GPU_MIN_PASSES,
    GPU_MIN_WINDOW_S,
    Protocol,
    interleaved_order,
    median_and_spread,
)
from joulebench.models import build_model
from joulebench.report.stats import paired_differences, round_differences

RECIPE = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10}
SETTINGS = {
    "batch_size": 256,
    "inference_min_seconds": 0.05,
    "threads": 1,
    "warmup_seconds": 0.0,
    "min_passes": 2,
    "rounds": 4,
    "max_gap_seconds": 0.01,
}


def test_every_variant_is_measured_in_every_round_in_orders_that_differ():
    names = ["baseline", "bf16", "int8", "prune80", "distill"]
    order = interleaved_order(names, rounds=6, seed=0)
    assert len(order) == 6
    assert all(sorted(round_) == sorted(names) for round_ in order)
    assert len({tuple(round_) for round_ in order}) > 1  # shuffled afresh, not one fixed order
    assert order == interleaved_order(names, rounds=6, seed=0)  # seeded: the same run repeats
    assert order != interleaved_order(names, rounds=6, seed=1)


def test_gpu_protocol_is_raised_to_the_sc24_practices():
    cpu = Protocol.from_config(SETTINGS, "cpu")
    assert (cpu.min_window_seconds, cpu.min_passes, cpu.rounds) == (0.05, 2, 4)
    gpu = Protocol.from_config(SETTINGS, "cuda")
    assert (gpu.min_window_seconds, gpu.min_passes) == (GPU_MIN_WINDOW_S, GPU_MIN_PASSES)
    assert gpu.rounds >= 4 and gpu.warmup_seconds >= 1.0 and "SC'24" in gpu.reference


def test_compare_measures_each_variant_once_per_round(digits_arrays):
    arrays, _ = digits_arrays
    torch.manual_seed(0)
    candidates = {
        "baseline": Candidate(
            build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10}), CPU, "fp32"
        ),
        "narrow": Candidate(
            build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "width": 4}), CPU, "fp32"
        ),
    }
    with EnergyMeter("compare_inference") as meter:
        rows = pd.DataFrame(interleaved_rounds(candidates, arrays, SETTINGS, meter, seed=0))
    assert len(rows) == 4 * 2
    assert rows.groupby("round")["variant"].apply(sorted).map(tuple).unique().tolist() == [
        ("baseline", "narrow")
    ]
    assert (rows["passes"] >= 2).all() and (rows["seconds"] >= 0.05).all()
    expected = rows["joules"] * 1000 / (rows["passes"] * len(arrays["test_y"]))
    assert rows["joules_per_1k"].tolist() == pytest.approx(expected.tolist())
    assert set(rows["source"]) == {"estimate:green-algorithms"} and set(rows["device"]) == {"cpu"}
    assert [w["window"] for w in meter.windows][:2] == [f"round1:{name}" for name in rows["variant"][:2]]


def test_a_cpu_variant_leaves_the_idle_gpu_out_of_its_window():
    record = {
        "joules": 130.0,
        "parts": [
            {"part": "gpu0", "joules": 100.0, "source": "nvml-counter"},
            {"part": "cpu0", "joules": 30.0, "source": "rapl"},
        ],
    }
    assert device_joules(record, CPU) == 30.0
    assert device_joules(record, Placement(torch.device("cpu"), 0)) == 130.0


def test_round_differences_average_each_seeds_rounds_then_take_the_interval_over_seeds_by_hand():
    rows = []
    base = {(0, 1): 10.0, (0, 2): 12.0, (1, 1): 11.0, (1, 2): 9.0}
    variant = {(0, 1): 7.0, (0, 2): 8.5, (1, 1): 8.0, (1, 2): 6.5}
    for name, values in (("baseline", base), ("int8", variant)):
        for (seed, round_), value in values.items():
            rows.append({"dataset": "d", "model": "m", "seed": seed, "round": round_, "variant": name,
                         "joules_per_1k": value})  # fmt: skip
    found = round_differences(pd.DataFrame(rows))[("d", "m", "int8")]
    # Per-round pairs: seed 0 -3.0, -3.5 (mean -3.25); seed 1 -3.0, -2.5 (mean -2.75).
    seed_means = [-3.25, -2.75]
    half_width = stats.t.ppf(0.975, 1) * statistics.stdev(seed_means) / 2**0.5
    assert found["inference_pairs"] == 2 and found["inference_rounds_per_seed"] == 2
    assert found["inference_joules_per_1k_diff"] == pytest.approx(-3.0)
    assert found["inference_joules_per_1k_diff_ci95"] == pytest.approx(half_width)
    assert found["inference_joules_per_1k_change"] == pytest.approx(-3.0 / 10.5)
    # Two seeds that disagree by 0.5 J/1k cannot tell a 3 J/1k saving from zero at 95%
    # (t(0.975, 1) = 12.7); the four rounds pooled as independent pairs claimed they could.
    assert found["inference_joules_per_1k_clear"] is False


SINGLE_WINDOWS = [("baseline", 0, 5.0), ("baseline", 1, 5.0), ("int8", 0, 4.0), ("int8", 1, 6.0)]


def test_paired_differences_take_inference_from_the_rounds():
    # Per seed, the evaluations' single windows say nothing clear (one saves, one loses); the
    # interleaved rounds save exactly 1 J/1k every round.
    table = pd.DataFrame(
        [
            {"dataset": "d", "model": "m", "variant": variant, "seed": seed, "test_accuracy": 0.9,
             "pipeline_energy_j": 10.0 + seed, "inference_joules_per_1k": single}
            for variant, seed, single in SINGLE_WINDOWS
        ]
    )  # fmt: skip
    rounds = pd.DataFrame(
        [
            {"dataset": "d", "model": "m", "seed": seed, "round": r, "variant": variant,
             "joules_per_1k": (5.0 if variant == "baseline" else 4.0) + 0.1 * r}
            for variant in ("baseline", "int8") for seed in (0, 1) for r in (1, 2, 3)
        ]
    )  # fmt: skip
    assert not paired_differences(table).iloc[0]["inference_joules_per_1k_clear"]
    pair = paired_differences(table, rounds).iloc[0]
    assert pair["inference_pairs"] == 2 and pair["inference_rounds_per_seed"] == 3 and pair["n_pairs"] == 2
    assert pair["inference_joules_per_1k_diff"] == pytest.approx(-1.0)
    assert pair["inference_joules_per_1k_clear"]


def test_median_and_spread():
    assert median_and_spread([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 2.0)
    assert median_and_spread([5.0]) == (5.0, 0.0)
