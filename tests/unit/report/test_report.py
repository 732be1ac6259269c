"""The report's logic on hand-made records: table, statistics, Pareto sets, decisions, outputs."""

import math
import os
import random
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, report_files
from joulebench import store
from joulebench.config import resolved_config
from joulebench.energy.contention import busy_joules
from joulebench.energy.host_speed import REFERENCE
from joulebench.report.aggregate import build_table, read_histories, stage_joules, write_report
from joulebench.report.columns import inference_busy_columns
from joulebench.report.decisions import (
    break_even,
    break_even_table,
    cheapest_meeting_target,
    decide,
    most_accurate_within_budget,
)
from joulebench.report.stats import mean_ci, paired_differences, pareto_mask, proportion_ci, summarize
from joulebench.report.summary import summary_markdown
from joulebench.report.tables import latex_escape, latex_table, paper_table
from joulebench.report.verdicts import verdict
from joulebench.variants import lineage

CARBON = resolved_config()["energy"]["carbon"]
VARIANTS = {
    "prune80": {"technique": "prune", "sparsity": 0.8, "finetune_epochs": 1},
    "int8_of_prune": {"technique": "quantize", "method": "int8_dynamic", "from": "prune80"},
    "fp16": {"technique": "precision", "precision": "fp16"},
}
RULES = {
    "baseline": "train_model",
    "fp16": "train_model",
    "prune80": "prune_model",
    "int8_of_prune": "quantize_model",
}


def brute_force_pareto(points):
    """Definition: a point is optimal if no other is at least as good in both and better in one."""
    optimal = []
    for i, (a, e) in enumerate(points):
        dominated = False
        for j, (a2, e2) in enumerate(points):
            if i != j and a2 >= a and e2 <= e and (a2, e2) != (a, e):
                dominated = True
        optimal.append(not dominated)
    return optimal


@pytest.mark.parametrize("seed", range(30))
def test_pareto_mask_matches_brute_force(seed):
    rng = random.Random(seed)
    # Few distinct values so ties and duplicates are common.
    points = [
        (rng.choice([0.9, 0.95, 0.97, rng.random()]), rng.choice([10.0, 20.0, rng.random() * 30]))
        for _ in range(rng.randint(1, 15))
    ]
    accuracy, energy = zip(*points, strict=True)
    assert pareto_mask(accuracy, energy) == brute_force_pareto(points)


def test_pareto_ties_are_all_optimal():
    assert pareto_mask([0.9, 0.9], [5.0, 5.0]) == [True, True]
    assert pareto_mask([0.9, 0.8], [5.0, 5.0]) == [True, False]
    assert pareto_mask([0.9, 0.9], [5.0, 4.0]) == [False, True]


def test_mean_ci_is_the_student_t_interval():
    # [1, 2, 3]: mean 2, sd 1, t(0.975, df=2) = 4.302652729911275 (t tables).
    mean, half_width, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    # Two seeds: t(0.975, df=1) = 12.706204736174707; sd of [0.9, 0.94] is 0.02 * sqrt(2).
    mean, half_width, n = mean_ci([0.9, 0.94])
    assert mean == pytest.approx(0.92)
    assert half_width == pytest.approx(12.706204736174707 * 0.02 * math.sqrt(2) / math.sqrt(2))


def test_mean_ci_gives_no_interval_for_one_value_and_ignores_missing():
    assert mean_ci([0.8]) == (0.8, None, 1)
    assert mean_ci([0.8, float("nan")]) == (0.8, None, 1)
    mean, half_width, n = mean_ci([])
    assert math.isnan(mean) and half_width is None and n == 0
    assert mean_ci([5.0, 5.0, 5.0]) == (5.0, 0.0, 3)


def test_lineage_follows_each_variant_back_to_a_model_trained_from_scratch():
    assert lineage(VARIANTS, "int8_of_prune") == ["int8_of_prune", "prune80", "baseline"]
    assert lineage(VARIANTS, "fp16") == ["fp16"]  # trained from scratch
    assert lineage(VARIANTS, "baseline") == ["baseline"]


def test_stage_joules_attributes_each_record_to_its_stage():
    chain = {"int8_of_prune": {"joules": 2.0}, "prune80": {"joules": 30.0}, "baseline": {"joules": 100.0}}
    stages = stage_joules([{"rule": "prepare_dataset", "joules": 5.0}], chain, {"joules": 7.0}, VARIANTS)
    assert stages == {
        "energy_data_j": 5.0,
        "energy_train_j": 100.0,
        "energy_compress_j": 32.0,
        "energy_evaluate_j": 7.0,
    }


# --- hand-made run on disk ----------------------------------------------------------------------


def energy_record(
    rule: str, joules: float, start: float, measured: bool = False, busy: bool = False, speed=None
) -> dict:
    """A record shaped like EnergyMeter.record(), estimated unless `measured`; `busy`: other
    processes loaded the host during its rule window; `speed`: its host-speed index (None: a
    record made before the index existed)."""
    source = "nvml-counter" if measured else "estimate:green-algorithms"
    devices = {"gpu0": {"joules": joules, "source": source, "name": "GPU", "device_id": "gpu:A"}}
    return {
        "schema": "joulebench.energy/1",
        "rule": rule,
        "host": "node1",
        "slurm_job_id": None,
        "zeus_version": "0.16.0",
        "hardware": {},
        "start_unix": start,
        "end_unix": start + 1.0,
        "wall_time_s": 1.0,
        "measured": measured,
        "joules": joules,
        "source": source,
        "short_window": False,
        "short_windows": [],
        "busy_host_windows": [f"rule:{rule}"] if busy else [],
        "devices": devices if measured else {},
        "parts": [{"part": "gpu0", "joules": joules, "source": source}]
        if measured
        else [
            {"part": "cpu:estimate", "joules": joules, "source": source},
            {"part": "dram:estimate", "joules": 0.0, "source": source},
        ],
        "windows": [],
        **(
            {"host_speed": speed, "host_speed_reference": REFERENCE, "steal_share": 0.0}
            if speed is not None
            else {}
        ),
    }


# (variant, seed) -> (accuracy, joules of its producing rule, inference J per 1k samples)
RUN = {
    ("baseline", 0): (0.95, 100.0, 4.0),
    ("baseline", 1): (0.97, 110.0, 4.2),
    ("fp16", 0): (0.94, 60.0, 4.1),
    ("fp16", 1): (0.96, 70.0, 3.9),
    ("prune80", 0): (0.93, 30.0, 2.0),
    ("prune80", 1): (0.95, 34.0, 2.2),
    ("int8_of_prune", 0): (0.92, 2.0, 1.0),
    ("int8_of_prune", 1): (0.92, 2.0, 1.2),
}


@pytest.fixture
def hand_made_run(tmp_path):
    """Files as the workflow leaves them for one model, four variants, two seeds."""
    entries = []
    start = 1000.0
    for (variant, seed), (acc, joules, inference) in RUN.items():
        model_dir = tmp_path / "models" / variant / f"seed{seed}"
        eval_dir = tmp_path / "eval" / variant / f"seed{seed}"
        metrics = {
            "test_accuracy": acc,
            "params": 1000,
            "nonzero_params": 200 if "prune" in variant else 1000,
            "size_bytes": 4000 if variant != "int8_of_prune" else 1500,
            "macs": 50000,
            "flops": 100000,
            "latency_p50_ms": 1.0,
            "latency_p95_ms": 1.5,
            "throughput_per_s": 900.0,
            "inference_joules_per_1k": inference,
            "inference_energy_source": "estimate:green-algorithms",
            "precision": "fp16" if variant == "fp16" else "fp32",
        }
        store.write_json(eval_dir / "metrics.json", metrics)
        store.write_json(eval_dir / "energy.json", energy_record("evaluate_model", 3.0, start + 0.5))
        store.write_json(model_dir / "energy.json", energy_record(RULES[variant], joules, start))
        history = pd.DataFrame(
            {
                "epoch": [1, 2],
                "val_accuracy": [acc - 0.1, acc],
                "cumulative_joules": [joules / 2, joules],
                "energy_source": ["estimate:green-algorithms"] * 2,
            }
        )
        # Post-training quantization trains no epochs: its history has none.
        store.write_csv(
            model_dir / "history.csv", history.iloc[:0] if variant == "int8_of_prune" else history
        )
        start += 10.0
        entries.append(
            {
                "dataset": "digits",
                "model": "small_cnn",
                "variant": variant,
                "seed": seed,
                "metrics": str(eval_dir / "metrics.json"),
                "energy": str(model_dir / "energy.json"),
                "history": str(model_dir / "history.csv"),
                "eval_energy": str(eval_dir / "energy.json"),
            }
        )
    data_energy = energy_record("prepare_dataset", 5.0, 0.0)
    return entries, data_energy


def test_build_table_has_stage_energy_and_lineage(hand_made_run):
    entries, data_energy = hand_made_run
    table = build_table(entries, VARIANTS, data_energy, CARBON).set_index(["variant", "seed"])
    assert len(table) == len(RUN)
    row = table.loc[("int8_of_prune", 1)]
    # quantization (2) + pruning (34) + baseline training (110) + data (5), all of seed 1
    assert row["energy_compress_j"] == pytest.approx(36.0)
    assert row["energy_train_j"] == pytest.approx(110.0)
    assert row["energy_data_j"] == pytest.approx(5.0)
    assert row["energy_evaluate_j"] == pytest.approx(3.0)
    assert row["pipeline_energy_j"] == pytest.approx(151.0)
    assert row["parent"] == "prune80" and row["producing_rule"] == "quantize_model"
    fp16 = table.loc[("fp16", 0)]
    assert fp16["pipeline_energy_j"] == pytest.approx(65.0) and fp16["energy_compress_j"] == 0.0
    assert pd.isna(fp16["parent"])
    assert not table["pipeline_energy_measured"].any()
    assert set(table["pipeline_energy_sources"]) == {"estimate:green-algorithms"}


def metered_on(path: str, host: str, devices: dict) -> None:
    """Rewrite the record at `path` as metered on `host`: joules per device id."""
    record = store.read_json(path)
    record["devices"] = {
        f"d{i}": {"joules": joules, "source": "nvml-counter", "name": "dev", "device_id": device_id}
        for i, (device_id, joules) in enumerate(devices.items())
    }
    store.write_json(path, {**record, "host": host, "measured": True, "estimated_joules": 0.0})


def test_idle_baseline_is_subtracted_only_on_its_own_host_and_devices(hand_made_run):
    """The idle job ran on node1 and measured its GPU A and CPU package 0. A job on another node
    (whose CPU package has the same id) or on another GPU of node1 gets no dynamic energy, and
    the row says why; every row says why where none applies."""
    entries, data_energy = hand_made_run
    idle = {**energy_record("measure_idle_power", 1.0, 0.0), "host": "node1"}
    idle["idle_power_w"] = {"gpu:A": 50.0, "cpu:package0": 20.0}
    own = {(e["variant"], e["seed"]): e["energy"] for e in entries}
    metered_on(own[("baseline", 0)], "node1", {"gpu:A": 100.0, "cpu:package0": 30.0})
    metered_on(own[("fp16", 0)], "node2", {"gpu:C": 80.0, "cpu:package0": 30.0})
    metered_on(own[("fp16", 1)], "node2", {"cpu:package0": 30.0})
    metered_on(own[("prune80", 0)], "node1", {"gpu:B": 40.0})
    table = build_table(entries, VARIANTS, data_energy, CARBON, idle).set_index(["variant", "seed"])
    dynamic, why = table["own_dynamic_energy_j"], table["own_dynamic_energy_unknown_because"]
    # 1 s windows: 100 - 50 W x 1 s on GPU A, 30 - 20 W x 1 s on package 0.
    assert dynamic[("baseline", 0)] == pytest.approx(60.0) and pd.isna(why[("baseline", 0)])
    for key in (("fp16", 0), ("fp16", 1)):
        assert pd.isna(dynamic[key])
        assert why[key] == "idle baseline taken on host node1, this job ran on node2"
    assert pd.isna(dynamic[("prune80", 0)])
    assert why[("prune80", 0)] == "idle baseline on node1 did not measure gpu:B"
    assert why[("baseline", 1)] == "nothing metered: an estimate has no idle share"
    no_idle = build_table(entries, VARIANTS, data_energy, CARBON)["own_dynamic_energy_unknown_because"]
    assert no_idle.str.startswith("no idle baseline in this run").all()


def test_read_histories_starts_each_curve_where_its_lineage_ended(hand_made_run):
    entries, data_energy = hand_made_run
    table = build_table(entries, VARIANTS, data_energy, CARBON)
    curves = read_histories(entries, table)
    assert "int8_of_prune" not in set(curves["variant"])  # post-training: no curve
    prune = curves[(curves["variant"] == "prune80") & (curves["seed"] == 0)]
    # data 5 + baseline 100 before pruning starts; then 15 and 30 J of fine-tuning
    assert list(prune["energy_from_data_j"]) == pytest.approx([120.0, 135.0])
    assert not curves["measured"].any()


def test_summarize_gives_means_intervals_and_fronts(hand_made_run):
    entries, data_energy = hand_made_run
    summary = summarize(build_table(entries, VARIANTS, data_energy, CARBON)).set_index("variant")
    base = summary.loc["baseline"]
    assert base["n"] == 2
    assert base["test_accuracy"] == pytest.approx(0.96)
    assert base["test_accuracy_ci95"] == pytest.approx(12.706204736174707 * 0.01)
    assert base["pipeline_energy_j"] == pytest.approx(110.0)
    assert summary.loc["int8_of_prune", "test_accuracy_ci95"] == 0.0  # identical seeds
    # fp16 (0.95, 70 J) dominates nothing cheaper; baseline (0.96, 110 J) is most accurate.
    assert summary["pareto_training"].to_dict() == {
        "baseline": True,
        "fp16": True,
        "int8_of_prune": False,
        "prune80": False,
    }
    assert summary.loc["int8_of_prune", "pareto_inference"]


# --- decisions ---------------------------------------------------------------------------------


def decision_summary(rows):
    """A summary with just the columns decisions read: (variant, accuracy, energy)."""
    return pd.DataFrame(
        [
            {"dataset": "d", "model": "m", "variant": v, "n": 1, "test_accuracy": a, "pipeline_energy_j": e}
            for v, a, e in rows
        ]
    )


def test_cheapest_meeting_target_takes_min_energy_and_keeps_ties():
    summary = decision_summary([("a", 0.90, 50.0), ("b", 0.95, 80.0), ("c", 0.97, 80.0), ("d", 0.99, 200.0)])
    assert list(cheapest_meeting_target(summary, 0.95)["variant"]) == ["c"]  # same energy, more accurate
    assert list(cheapest_meeting_target(summary, 0.90)["variant"]) == ["a"]
    assert list(cheapest_meeting_target(summary, 0.995)["variant"]) == []  # nobody meets it
    tied = decision_summary([("x", 0.96, 80.0), ("w", 0.96, 80.0)])
    assert list(cheapest_meeting_target(tied, 0.95)["variant"]) == ["w", "x"]


def test_most_accurate_within_budget_takes_max_accuracy_and_keeps_ties():
    summary = decision_summary([("a", 0.90, 50.0), ("b", 0.95, 80.0), ("c", 0.95, 70.0), ("d", 0.99, 200.0)])
    assert list(most_accurate_within_budget(summary, 100.0)["variant"]) == ["c"]  # same accuracy, cheaper
    assert list(most_accurate_within_budget(summary, 200.0)["variant"]) == ["d"]  # budget is inclusive
    assert list(most_accurate_within_budget(summary, 10.0)["variant"]) == []
    tied = decision_summary([("x", 0.96, 80.0), ("w", 0.96, 80.0)])
    assert list(most_accurate_within_budget(tied, 80.0)["variant"]) == ["w", "x"]


def test_decide_reports_both_decisions_as_json_ready_records():
    summary = decision_summary([("a", 0.90, 50.0), ("b", 0.95, 80.0)])
    summary["test_accuracy_ci95"] = [None, 0.01]
    summary["pipeline_energy_j_ci95"] = [float("nan"), 2.0]
    summary["pipeline_energy_measured"] = [False, False]
    decisions = decide(summary, {"accuracy_target": 0.92, "energy_budget_j": 60.0})
    assert [r["variant"] for r in decisions["cheapest_meeting_target"]] == ["b"]
    assert [r["variant"] for r in decisions["most_accurate_within_budget"]] == ["a"]
    assert decisions["most_accurate_within_budget"][0]["pipeline_energy_j_ci95"] is None
    assert decide(summary, {})["cheapest_meeting_target"] == []


def test_break_even_arithmetic():
    # 1000 J more to produce, 0.5 J saved per inference: paid back after 2000 inferences.
    result = break_even(2000.0, 1000.0, inference_baseline_j=1.0, inference_variant_j=0.5)
    assert result.inferences == pytest.approx(2000.0)
    assert result.verdict == "after 2,000 inferences"
    # 4.1 - 2.1 is 1.9999999999999996 in floating point; the verdict must still say 16,000.
    assert break_even(142.0, 110.0, 4.1 / 1000, 2.1 / 1000).verdict == "after 16,000 inferences"
    # Cheaper to produce and per inference: ahead from the start.
    assert break_even(900.0, 1000.0, 1.0, 0.5).inferences == 0.0
    # More to produce and no cheaper per inference: never.
    never = break_even(2000.0, 1000.0, 1.0, 1.0)
    assert never.inferences is None and never.verdict.startswith("never")
    assert break_even(2000.0, 1000.0, 1.0, 1.5).inferences is None
    # Cheaper to produce but dearer per inference: ahead only for the first 100/0.5 = 200.
    ahead = break_even(900.0, 1000.0, 1.0, 1.5)
    assert ahead.inferences is None and "first 200 inferences" in ahead.verdict


def test_break_even_table_uses_the_same_models_baseline(hand_made_run):
    entries, data_energy = hand_made_run
    runs = build_table(entries, VARIANTS, data_energy, CARBON)
    table = break_even_table(summarize(runs), paired_differences(runs)).set_index("variant")
    # prune80: 105 + 32 vs 105 J to produce (mean), 2.1 vs 4.1 J/1k inference
    assert table.loc["prune80", "extra_produce_j"] == pytest.approx(32.0)
    assert table.loc["prune80", "break_even_inferences"] == pytest.approx(32.0 / (2.0 / 1000))
    assert table.loc["prune80", "verdict"] == "after 16,000 inferences"
    # fp16 is cheaper to produce, and its means save 0.1 J/1k, but its inference difference is
    # within noise: "immediately" would read a winner into it.
    assert table.loc["fp16", "verdict"] == "cannot be determined with these seeds and rounds"
    assert pd.isna(table.loc["fp16", "break_even_inferences"])
    assert "baseline" not in table.index


def by_variant(frame: pd.DataFrame) -> dict:
    return {row["variant"]: row for _, row in frame.iterrows()}


def test_paired_differences_compare_seed_by_seed_and_say_when_noise_wins(hand_made_run):
    entries, data_energy = hand_made_run
    pairs = by_variant(paired_differences(build_table(entries, VARIANTS, data_energy, CARBON)))
    assert sorted(pairs) == ["fp16", "int8_of_prune", "prune80"]
    fp16 = pairs["fp16"]
    # Energy to produce: 65 vs 105 J (seed 0), 75 vs 115 J (seed 1): -40 J both times.
    assert fp16["n_pairs"] == 2 and fp16["pipeline_energy_j_diff"] == pytest.approx(-40.0)
    assert fp16["pipeline_energy_j_change"] == pytest.approx(-40.0 / 110.0)
    assert fp16["pipeline_energy_j_clear"]
    # Inference: +0.1 and -0.3 J/1k: mean -0.1, sd 0.2828, t(0.975, 1) x sd / sqrt(2) = 12.706 x 0.2.
    assert fp16["inference_joules_per_1k_diff"] == pytest.approx(-0.1)
    assert fp16["inference_joules_per_1k_diff_ci95"] == pytest.approx(12.706204736174707 * 0.2)
    assert not fp16["inference_joules_per_1k_clear"]
    assert verdict(fp16) == (
        "- **fp16** (small_cnn) saves 36% of the energy to produce, no clear difference in inference "
        "energy (-2%, but the 95% interval includes 0), accuracy -1.00 ± 0.00 points."
    )
    assert pairs["prune80"]["inference_joules_per_1k_clear"]
    one_seed = by_variant(paired_differences(build_table(entries[::2], VARIANTS, data_energy, CARBON)))
    assert verdict(one_seed["prune80"]) == (
        "- **prune80** (small_cnn) does **not** save the energy to produce (+29%) (one seed, no interval), "
        "saves 50% of inference energy (one seed, no interval), accuracy -2.00 points."
    )


def seeded_rounds(differences_by_seed: dict, rounds: int = 5) -> pd.DataFrame:
    """Interleaved windows of one model, baseline and "int8", as compare_inference writes them:
    per seed and round the baseline's joules per 1k, and the variant's that much off it
    (`differences_by_seed`: seed -> the difference in each round)."""
    rows = []
    for seed, differences in differences_by_seed.items():
        for round_, difference in enumerate(differences[:rounds], start=1):
            base = 4.0 + 0.2 * seed + 0.01 * round_
            for variant, value in (("baseline", base), ("int8", base + difference)):
                rows.append({"dataset": "d", "model": "small_cnn", "seed": seed, "round": round_,
                             "variant": variant, "joules_per_1k": value})  # fmt: skip
    return pd.DataFrame(rows)


def seeded_table(produce: dict, inference: dict) -> pd.DataFrame:
    """Per-seed rows of baseline and "int8" ({variant: [value per seed]}), as build_table gives."""
    return pd.DataFrame(
        [
            {"dataset": "d", "model": "small_cnn", "variant": variant, "seed": seed, "test_accuracy": 0.9,
             "pipeline_energy_j": produce[variant][seed], "inference_joules_per_1k": inference[variant][seed]}
            for variant in ("baseline", "int8") for seed in range(len(produce[variant]))
        ]
    )  # fmt: skip


# The variant's inference difference in each of 5 rounds of 3 seeds' jobs: the seed moves it by
# 0.1 J/1k, the rounds of one job scatter by 0.005.
SEED_EFFECT = {0: [0.0, 0.005, -0.005, 0.0, 0.005], 1: [0.1, 0.105, 0.095, 0.1, 0.1], 2: [0.04] * 5}


def test_inference_interval_is_over_seeds_when_the_seed_moves_the_difference():
    rounds = seeded_rounds(SEED_EFFECT)
    table = seeded_table(
        {"baseline": [100.0] * 3, "int8": [90.0] * 3}, {"baseline": [4.0] * 3, "int8": [4.0] * 3}
    )
    pair = paired_differences(table, rounds).iloc[0]
    seed_means = [sum(d) / len(d) for d in SEED_EFFECT.values()]
    diff, half_width, _ = mean_ci(seed_means)
    assert pair["inference_pairs"] == 3 and pair["inference_rounds_per_seed"] == 5
    assert pair["inference_joules_per_1k_diff"] == pytest.approx(diff)
    assert pair["inference_joules_per_1k_diff_ci95"] == pytest.approx(half_width)
    # The 15 rounds pooled as independent pairs give an interval several times narrower, which
    # excludes 0; the seeds cannot tell the variant from the baseline.
    _, pooled, _ = mean_ci([d for differences in SEED_EFFECT.values() for d in differences])
    assert half_width > 4 * pooled and abs(diff) > pooled
    assert not pair["inference_joules_per_1k_clear"]
    assert "no clear difference in inference energy" in verdict(pair)


def test_break_even_and_verdict_rest_on_one_inference_difference():
    # The per-seed figures (medians over rounds) save 1 J/1k; in the rounds, paired within each
    # job, the variant costs 0.5 J/1k more every time. The verdict and the break-even must agree.
    table = seeded_table(
        {"baseline": [100.0, 101.0, 102.0], "int8": [150.0, 151.0, 152.0]},
        {"baseline": [5.0] * 3, "int8": [4.0] * 3},
    )
    rounds = seeded_rounds({seed: [0.5 + 0.01 * seed] * 5 for seed in range(3)})
    differences = paired_differences(table, rounds)
    pair = differences.iloc[0]
    means = table.groupby(["dataset", "model", "variant"], as_index=False).mean(numeric_only=True)
    row = break_even_table(means, differences).iloc[0]
    assert row["saving_per_inference_j"] == pytest.approx(-pair["inference_joules_per_1k_diff"] / 1000)
    assert row["saving_per_inference_j"] == pytest.approx(-0.51 / 1000)
    assert row["extra_produce_j"] == pytest.approx(pair["pipeline_energy_j_diff"]) == pytest.approx(50.0)
    assert "does **not** save inference energy" in verdict(pair)
    assert row["verdict"] == "never: it does not save inference energy"


# --- tables and files --------------------------------------------------------------------------


def test_paper_table_marks_intervals_and_estimates(hand_made_run):
    entries, data_energy = hand_made_run
    summary = summarize(build_table(entries, VARIANTS, data_energy, CARBON))
    header, rows, footnotes = paper_table(summary)
    assert "Accuracy (%)" in header and "Energy to produce (J)" in header
    baseline = rows[list(summary["variant"]).index("baseline")]
    # The logit-scale interval of 95% and 97%, not 96.00 ± 12.71 (the plain t-interval, past 100%).
    low, high = proportion_ci([0.95, 0.97])
    assert baseline[2] == f"96.00 ({low * 100:.2f}-{high * 100:.2f})" == "96.00 (45.82-99.86)"
    # Identical seeds: a zero-width interval, symmetric.
    assert rows[list(summary["variant"]).index("int8_of_prune")][2] == "92.00 ± 0.00"
    assert baseline[3].endswith("†")  # estimated energy
    assert any("Estimated, wholly or in part" in note for note in footnotes)
    one_seed = summarize(build_table(entries[::2], VARIANTS, data_energy, CARBON))
    _, rows, footnotes = paper_table(one_seed)
    assert rows[0][2].endswith("‡")  # n = 1: no interval, said so
    assert "‡ one seed, no interval" in footnotes[0]


def test_latex_table_is_booktabs_and_escaped():
    tex = latex_table(["Variant", "Accuracy (%)"], [["int8_of_prune", "92.0 ± 1.0†"]], ["† Estimated."])
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "int8\\_of\\_prune & 92.0 $\\pm$ 1.0$^\\dagger$ \\\\" in tex
    assert "Accuracy (\\%)" in tex
    assert latex_escape("a_b & c") == "a\\_b \\& c"


def test_summary_says_when_nothing_meets_the_target(hand_made_run):
    entries, data_energy = hand_made_run
    summary = summarize(build_table(entries, VARIANTS, data_energy, CARBON))
    settings = {"accuracy_target": 0.99, "energy_budget_j": 1.0}
    differences = paired_differences(build_table(entries, VARIANTS, data_energy, CARBON))
    text = summary_markdown(
        summary, decide(summary, settings), break_even_table(summary, differences), differences
    )
    assert "**No variant reaches 99.0% accuracy**" in text
    assert "**No variant can be produced within 1.0 J**" in text
    assert "does **not** save the energy to produce" in text
    settings = {"accuracy_target": 0.95, "energy_budget_j": 120.0}
    text = summary_markdown(
        summary, decide(summary, settings), break_even_table(summary, differences), differences
    )
    assert "Cheapest variant reaching 95.0% accuracy: **small_cnn/fp16**" in text
    assert "Most accurate variant within 120.0 J to produce: **small_cnn/baseline**" in text


def busy(entries, variant: str, seed: int) -> str:
    """Flag the producing job of (variant, seed) busy_host over its whole rule window; its label."""
    entry = next(e for e in entries if (e["variant"], e["seed"]) == (variant, seed))
    store.write_json(
        entry["energy"], {**store.read_json(entry["energy"]), "busy_host_windows": [f"rule:{RULES[variant]}"]}
    )
    return entry["energy"]


def test_a_busy_job_of_one_side_that_carries_the_difference_flags_the_row_and_is_named(hand_made_run):
    entries, data_energy = hand_made_run
    settings = {"accuracy_target": 0.95}
    _, _, _, quiet = report_of(entries, data_energy, settings)
    assert "Busy host" not in quiet and "During some energy windows" not in quiet
    # Pruning seed 1 (34 J) is prune80's alone: it is all of the 34 J prune80 costs beyond its
    # baseline (149 vs 115 J), so it can erase the difference. int8_of_prune, made from it, costs
    # 36 J beyond (151 vs 115): the 34 J cannot erase that, so it is listed but not flagged.
    pruning = busy(entries, "prune80", 1)
    table, summary, _, text = report_of(entries, data_energy, settings)
    rows = table.set_index(["variant", "seed"])
    flagged = rows["pipeline_busy_host"]
    assert flagged[flagged].index.tolist() == [("prune80", 1)]
    assert (
        rows.loc[("prune80", 1), "verdict_busy_jobs"] == f"{pruning} (23% of the variant's energy to produce)"
    )
    assert rows.loc[("int8_of_prune", 1), "pipeline_busy_jobs"] == f"{pruning} (23%)"
    assert rows.loc[("int8_of_prune", 1), "pipeline_busy_share"] == pytest.approx(34 / 151)
    assert rows.loc[("int8_of_prune", 1), "verdict_busy_jobs"] == ""
    assert summary.set_index("variant")["busy_host_seeds"].to_dict() == {
        "baseline": 0,
        "fp16": 0,
        "int8_of_prune": 0,
        "prune80": 1,
    }
    assert (
        f"**Busy host**: the comparison with the baseline of prune80 (1 of 2 seeds: {pruning} (23% of "
        "the variant's energy to produce)) rests on energy windows that only one side of it ran while "
        "other processes used more than 10% of the host's CPUs" in text
    )


def test_a_busy_job_both_sides_share_flags_no_row(hand_made_run):
    entries, data_energy = hand_made_run
    settings = {"accuracy_target": 0.95}
    # Baseline seed 1's training is in the lineage of prune80 and int8_of_prune seed 1, and in the
    # baseline they are compared with: it cancels. fp16 trains alone and costs 40 J less than the
    # baseline (75 vs 115 J); the 110 J busy job on the baseline's side can erase that.
    training = busy(entries, "baseline", 1)
    table, summary, _, text = report_of(entries, data_energy, settings)
    rows = table.set_index(["variant", "seed"])
    flagged = rows["pipeline_busy_host"]
    assert flagged[flagged].index.tolist() == [("fp16", 1)]
    assert (
        rows.loc[("fp16", 1), "verdict_busy_jobs"] == f"{training} (96% of the baseline's energy to produce)"
    )
    assert rows.loc[("prune80", 1), "pipeline_busy_jobs"] == f"{training} (74%)"
    assert rows.loc[("baseline", 1), "own_busy_host"] and not rows.loc[("baseline", 1), "pipeline_busy_host"]
    assert "**Busy host**: the comparison with the baseline of fp16 (1 of 2 seeds: " in text
    # A busy data job is in every lineage and flags no row; the summary says it ran.
    store.write_json(training, {**store.read_json(training), "busy_host_windows": []})
    data_energy["busy_host_windows"] = ["rule:prepare_dataset"]
    table, _, _, text = report_of(entries, data_energy, settings)
    assert not table["pipeline_busy_host"].any()
    assert table["pipeline_busy_jobs"].str.startswith("data (").all()
    assert "Busy host" not in text
    assert "but none can move a verdict: each is shared by both sides of its comparison" in text


def test_a_busy_job_counts_only_its_busy_windows():
    record = {"joules": 100.0, "busy_host_windows": ["epoch2"], "windows": [
        {"window": "epoch1", "joules": 45.0, "busy_host": False},
        {"window": "epoch2", "joules": 40.0, "busy_host": True},
    ]}  # fmt: skip
    assert busy_joules(record) == 40.0
    assert busy_joules({**record, "busy_host": True, "busy_host_windows": ["rule:x", "epoch2"]}) == 100.0
    assert busy_joules({**record, "busy_host_windows": []}) is None
    # Two phases of one name (the fine-tunes of a multi-step prune) are two windows.
    twice = {
        **record,
        "windows": [*record["windows"], {"window": "epoch2", "joules": 10.0, "busy_host": True}],
    }
    assert busy_joules(twice) == 50.0


def rounds_of(variant: str, joules: list[float], busy: set[int] = frozenset()) -> list[dict]:
    """One variant's interleaved rounds (joulebench.evaluate.interleaved's rows); `busy`: busy_host."""
    return [
        {"seed": 0, "round": r, "variant": variant, "joules_per_1k": j, "busy_host": r in busy}
        for r, j in enumerate(joules, start=1)
    ]


def test_a_busy_inference_round_flags_the_row_only_where_it_carries_the_difference():
    base = rounds_of("baseline", [4.0, 4.0, 4.0, 4.0])
    # int8 saves half: one busy round of 2 J cannot erase the 8 J its four rounds save in all.
    columns = inference_busy_columns(rounds_of("int8", [2.0, 2.0, 2.0, 2.0], busy={3}), base)
    assert columns == {
        "inference_busy_rounds": "seed0/round3:int8 (25%)",
        "inference_busy_host": False,
        "verdict_busy_rounds": "",
    }
    # fp16 is within 1% of the baseline: a busy round on its dearer side can.
    columns = inference_busy_columns(rounds_of("fp16", [4.1, 4.0, 4.0, 4.0], busy={3}), base)
    assert columns["inference_busy_host"]
    assert columns["verdict_busy_rounds"] == "seed0/round3:fp16 (25% of the variant's inference energy)"
    # A busy round of the cheaper side only widens the gap; the baseline's own row has no verdict.
    assert not inference_busy_columns(rounds_of("fp16", [3.9, 4.0, 4.0, 4.0], busy={3}), base)[
        "inference_busy_host"
    ]
    assert not inference_busy_columns(rounds_of("baseline", [4.0] * 4, busy={1}), None)["inference_busy_host"]
    # A busy baseline round where the baseline is the dearer side: named on its side.
    columns = inference_busy_columns(
        rounds_of("fp16", [3.9, 4.0, 4.0, 4.0]), rounds_of("baseline", [4.0] * 4, busy={2})
    )
    assert columns["verdict_busy_rounds"] == "seed0/round2:baseline (25% of the baseline's inference energy)"


def report_of(entries, data_energy, settings):
    """The table, summary, paired differences and summary.md of a hand-made run."""
    table = build_table(entries, VARIANTS, data_energy, CARBON)
    summary = summarize(table)
    differences = paired_differences(table)
    text = summary_markdown(
        summary, decide(summary, settings), break_even_table(summary, differences), differences
    )
    return table, summary, differences, text


def test_summary_names_variants_measured_while_another_process_used_the_gpu(hand_made_run):
    entries, data_energy = hand_made_run
    settings = {"accuracy_target": 0.95}
    prune80 = next(e for e in entries if e["variant"] == "prune80" and e["seed"] == 1)
    record = energy_record("prune_model", 34.0, 1050.0, measured=True) | {
        "busy_gpu_windows": ["rule:prune_model"]
    }
    store.write_json(prune80["energy"], record)
    table, _, _, text = report_of(entries, data_energy, settings)
    assert table.loc[table["variant"] == "prune80", "pipeline_busy_gpu"].tolist() == [False, True]
    assert "**Busy GPU**: other processes computed on the metered GPU during energy windows of " in text
    assert "prune80 (1 of 2 seeds)" in text


def test_the_summary_states_the_boundary_and_marks_a_verdict_across_boundaries(hand_made_run):
    entries, data_energy = hand_made_run
    settings = {"accuracy_target": 0.95}

    table, _, differences, text = report_of(entries, data_energy, settings)
    assert "**What the joules cover.**" in text and "cooling and facility overhead" in text
    assert not differences["pipeline_boundaries"].str.contains(" vs ").any()
    # fp16 trained on a GPU that NVML reads; the baseline was estimated. (The data job is in both.)
    for entry in entries:
        if entry["variant"] == "fp16":
            record = store.read_json(entry["energy"])
            parts = [{"part": "gpu0", "joules": 1.0, "source": "nvml-counter"}]
            store.write_json(entry["energy"], {**record, "parts": parts, "boundary": {"id": "gpu"}})
    table, _, differences, text = report_of(entries, data_energy, settings)
    assert set(table.loc[table["variant"] == "fp16", "pipeline_energy_boundary"]) == {
        "cpu:estimate+dram:estimate+gpu"
    }
    fp16 = differences.set_index("variant").loc["fp16", "pipeline_boundaries"]
    assert " vs " in fp16
    assert f"(not like for like: the figures cover {fp16})" in text
    assert "gpu, the GPU board, as NVML counts it" in text


def test_summary_states_the_runs_host_speed_and_flags_variants_made_on_a_slow_host(hand_made_run):
    entries, data_energy = hand_made_run
    settings = {"accuracy_target": 0.95}

    # Records made before the index existed: the paragraph says so, nothing is flagged.
    _, summary, _, text = report_of(entries, data_energy, settings)
    assert "**Host speed.** These intervals are within-run" in text
    assert "These records carry no host-speed index" in text and "Slow host" not in text
    # Every job at 1,000 units/s but baseline seed 1's training, at 800 (20% slower).
    for entry in entries:
        for key in ("energy", "eval_energy"):
            record = store.read_json(entry[key])
            slow = key == "energy" and (entry["variant"], entry["seed"]) == ("baseline", 1)
            store.write_json(entry[key], {**record, "host_speed": 800.0 if slow else 1000.0,
                                       "host_speed_reference": REFERENCE})  # fmt: skip
    data_energy.update(host_speed=1000.0, host_speed_reference=REFERENCE)
    table, summary, _, text = report_of(entries, data_energy, settings)
    assert table.loc[table["variant"] == "baseline", "own_host_speed"].tolist() == [1000.0, 800.0]
    # Every seed-1 model made from baseline seed 1 carries the slow job in its lineage, but shares
    # it with the baseline it is compared with: only fp16, trained alone, compares against it.
    rows = table.set_index(["variant", "seed"])
    slow = rows["pipeline_slow_host"]
    assert slow[slow].index.tolist() == [("fp16", 1)]
    baseline_training = next(e["energy"] for e in entries if (e["variant"], e["seed"]) == ("baseline", 1))
    assert rows.loc[("fp16", 1), "verdict_slow_jobs"].startswith(f"{baseline_training} (")
    assert "of the baseline's energy to produce" in rows.loc[("fp16", 1), "verdict_slow_jobs"]
    assert rows.loc[("prune80", 1), "pipeline_slow_jobs"].startswith(baseline_training)
    assert 0 < rows.loc[("prune80", 1), "pipeline_slow_share"] < 1
    assert rows.loc[("prune80", 0), "pipeline_slow_jobs"] == ""
    by_name = summary.set_index("variant")
    assert by_name["slow_host_seeds"].to_dict() == {
        "baseline": 0,
        "fp16": 1,
        "int8_of_prune": 0,
        "prune80": 0,
    }
    assert by_name.loc["baseline", "run_host_speed_median"] == 1000.0
    assert by_name.loc["baseline", "run_host_speed_n"] == 17  # data, 8 models, 8 evaluations
    assert "median 1,000 units/s over 17 jobs, IQR 0 (0.0% of the median), range 800-1,000" in text
    assert (
        f"**Slow host**: the comparison with the baseline of fp16 (1 of 2 seeds: {baseline_training} ("
        in text
    )
    # A slow data job sits in every lineage: it cancels in every comparison and flags no row.
    for entry in entries:
        record = store.read_json(entry["energy"])
        store.write_json(entry["energy"], {**record, "host_speed": 1000.0})
    data_energy.update(host_speed=800.0)
    table, summary, _, text = report_of(entries, data_energy, settings)
    assert not table["pipeline_slow_host"].any()
    assert table["pipeline_slow_jobs"].str.startswith("data (").all()
    assert "but each is shared by both sides of every comparison with the baseline it is in" in text
    # The paragraph sits with the repeatability section.
    where = [text.index(s) for s in ("## Repeatability and resolution", "**Host speed.**", "## Verdicts")]
    assert where == sorted(where)


def test_a_slow_job_of_one_side_flags_only_the_rows_whose_difference_it_carries(hand_made_run):
    entries, data_energy = hand_made_run
    # Pruning seed 1 at 800 units/s, every other job at 1,000. It is all of prune80's 34 J beyond
    # its baseline, but int8_of_prune costs 36 J beyond: the same function as busy_host decides.
    for entry in entries:
        for key in ("energy", "eval_energy"):
            slow = key == "energy" and (entry["variant"], entry["seed"]) == ("prune80", 1)
            record = {**store.read_json(entry[key]), "host_speed": 800.0 if slow else 1000.0}
            store.write_json(entry[key], {**record, "host_speed_reference": REFERENCE})
    data_energy.update(host_speed=1000.0, host_speed_reference=REFERENCE)
    table, _, _, _ = report_of(entries, data_energy, {"accuracy_target": 0.95})
    rows = table.set_index(["variant", "seed"])
    assert rows.index[rows["pipeline_slow_host"]].tolist() == [("prune80", 1)]
    assert rows.loc[("int8_of_prune", 1), "pipeline_slow_jobs"].endswith("(23%)")
    assert rows.loc[("int8_of_prune", 1), "verdict_slow_jobs"] == ""


def test_write_report_is_byte_identical_on_a_rerun(hand_made_run, tmp_path):
    entries, data_energy = hand_made_run
    table = build_table(entries, VARIANTS, data_energy, CARBON)
    histories = read_histories(entries, table)
    settings = {"accuracy_target": 0.95, "energy_budget_j": 120.0}
    write_report(table, histories, settings, report_files(tmp_path / "first"))
    write_report(table, histories, settings, report_files(tmp_path / "second"))
    first = sorted(p.name for p in (tmp_path / "first").iterdir())
    for name in ("accuracy_vs_training_energy.pdf", "training_curves.png", "table.tex", "results.parquet"):
        assert name in first
    for name in first:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    pdf = (tmp_path / "first" / "energy_by_stage.pdf").read_bytes()
    assert b"CreationDate" not in pdf
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "first" / "results.parquet"), table)


def test_figures_go_to_the_files_the_rule_declares_whatever_their_names(hand_made_run, tmp_path):
    """Renaming a figure's files is one edit, in the rule: the package writes the declared paths."""
    entries, data_energy = hand_made_run
    table = build_table(entries, VARIANTS, data_energy, CARBON)
    outputs = report_files(tmp_path)
    renamed = [tmp_path / "fig" / "pareto-vector.pdf", tmp_path / "fig" / "pareto.png"]
    outputs["accuracy_vs_training_energy"] = renamed
    write_report(table, read_histories(entries, table), {"accuracy_target": 0.95}, outputs)
    assert renamed[0].read_bytes().startswith(b"%PDF") and renamed[1].read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "accuracy_vs_training_energy.png").exists()
    assert (tmp_path / "accuracy_vs_size.pdf").exists()


def test_break_even_markdown_gives_the_reason_and_flags_crossed_devices():
    from joulebench.report.decisions import UNDETERMINED, break_even_unknown_because
    from joulebench.report.summary import break_even_markdown

    keys = {"dataset": "digits", "model": "small_cnn", "variant": "prune80"}
    pair = {"n_pairs": 3, "inference_joules_per_1k_clear": True, "pipeline_energy_j_clear": False}
    break_even = pd.DataFrame(
        [{**keys, "inference_devices": "cuda vs cpu", "extra_produce_j": 5.0, "saving_per_inference_j": 0.001,
          "break_even_inferences": None, "verdict": UNDETERMINED,
          "break_even_unknown_because": break_even_unknown_because(pair)}]
    )  # fmt: skip
    text = "\n".join(break_even_markdown(break_even))
    assert (
        "| cannot be determined with these seeds and rounds: the energy-to-produce difference is within "
        "noise (its 95% interval includes 0); more seeds (`seeds`) would resolve it "
        "(inference crosses devices: cuda vs cpu) |"
    ) in text
    assert "5,000" not in text


def test_verdicts_say_when_inference_crosses_devices(hand_made_run):
    # On a GPU host a float variant infers on the GPU, an int8 one on the CPU: not like for like.
    entries, data_energy = hand_made_run
    table = build_table(entries, VARIANTS, data_energy, CARBON)
    table["inference_device"] = ["cpu" if "int8" in v else "cuda" for v in table["variant"]]
    pairs = by_variant(paired_differences(table))
    crossing = [name for name, pair in pairs.items() if " vs " in pair["inference_devices"]]
    assert crossing and all("int8" in name for name in crossing)
    assert "(not like for like: inference on cuda vs cpu)" in verdict(pairs[crossing[0]])
    assert all(pair["inference_devices"] == "cuda" for name, pair in pairs.items() if name not in crossing)


def test_accuracy_interval_stays_within_0_and_100_percent():
    from joulebench.report.stats import proportion_ci

    low, high = proportion_ci([0.97, 0.99, 1.0])
    assert 0.0 < low < 0.97 and 0.99 < high <= 1.0
    mean, half_width, _ = mean_ci([0.97, 0.99, 1.0])
    assert mean + half_width > 1.0  # the plain Student-t interval runs past 100%
    assert proportion_ci([0.9]) == (None, None)


def test_data_diversity_of_each_stage_in_the_report(tmp_path):
    from joulebench.report.aggregate import read_diversity
    from joulebench.report.summary import diversity_markdown

    values = {"class_entropy_nats": 2.3, "class_evenness": 0.99, "vendi_sample": 1000}
    store.write_json(
        tmp_path / "cleaning_report.json",
        {"diversity": {"raw": {**values, "vendi_score": 40.0}, "cleaned": {**values, "vendi_score": 41.0}}},
    )
    subset = tmp_path / "subset.json"  # the record names its variant: the path plays no part
    store.write_json(
        subset,
        {"variant": "subset50", "method": "el2n", "seed": 0,
         "diversity": {"cleaned": {**values, "vendi_score": 41.0},
                       "sampled": {**values, "vendi_score": 35.5}}},
    )  # fmt: skip
    diversity = read_diversity([tmp_path / "cleaning_report.json", subset])
    assert list(diversity["data"]) == ["raw", "cleaned", "cleaned", "sampled"]
    assert list(diversity["variant"].fillna("")) == ["", "", "subset50", "subset50"]
    text = "\n".join(diversity_markdown(diversity))
    assert "## Data diversity" in text and "| sampled | subset50 | 0 | 2.300 | 0.990 | 35.5 |" in text
    assert (
        "subset50 (seed 0): the sample does **not** keep the diversity of the cleaned data "
        "(Vendi 35.5 vs 41.0, 1,000 images each)" in text
    )


def test_vendi_scores_of_samples_of_different_sizes_give_no_verdict():
    from joulebench.report.summary import diversity_markdown

    values = {"variant": "subset50_el2n", "seed": 0, "class_entropy_nats": 2.3, "class_evenness": 0.99}
    diversity = pd.DataFrame(
        [{"data": "cleaned", **values, "vendi_score": 41.0, "vendi_sample": 1000},
         {"data": "sampled", **values, "vendi_score": 35.5, "vendi_sample": 584}]
    )  # fmt: skip
    text = "\n".join(diversity_markdown(diversity))
    assert "keep" not in text.split("| sampled |")[-1]
    assert (
        "subset50_el2n (seed 0): the Vendi scores do not compare (Vendi 35.5 vs 41.0, on samples of 584 "
        "and 1,000 images)" in text
    )


def test_the_report_imports_neither_torch_nor_zeus():
    """aggregate_report runs in envs/report.yaml, which has neither: its modules import them not
    even lazily at import time."""
    code = (
        "import sys, joulebench.report.aggregate, joulebench.run.logs;"
        " print(sorted({'torch', 'zeus'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow" / "scripts")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- what the report may claim -----------------------------------------------------------------


def noisy_prune80_inference(entries) -> None:
    """prune80 seed 1 infers at 4.6 J/1k (baseline 4.2): paired differences -2.0 and +0.4 J/1k,
    an interval of -0.8 ± 15.2 that includes 0. Its means still give a number: 32 J more to
    produce, 0.8 J/1k saved, N* = 40,000."""
    entry = next(e for e in entries if (e["variant"], e["seed"]) == ("prune80", 1))
    store.write_json(entry["metrics"], {**store.read_json(entry["metrics"]), "inference_joules_per_1k": 4.6})


def test_break_even_within_noise_gives_no_number_and_says_what_would_resolve_it(hand_made_run, tmp_path):
    entries, data_energy = hand_made_run
    noisy_prune80_inference(entries)
    table = build_table(entries, VARIANTS, data_energy, CARBON)
    assert not by_variant(paired_differences(table))["prune80"]["inference_joules_per_1k_clear"]
    outputs = report_files(tmp_path)
    write_report(table, read_histories(entries, table), {"accuracy_target": 0.95}, outputs)

    text = outputs["summary"].read_text()
    section = text[text.index("## Break-even") : text.index("## Results")]
    row = next(line for line in section.splitlines() if line.startswith("| small_cnn | prune80 |"))
    assert "40,000" not in row and "inferences" not in row
    assert (
        "cannot be determined with these seeds and rounds: the inference energy difference is within "
        "noise (its 95% interval includes 0); more seeds (`seeds`) or more inference rounds "
        "(`evaluation.rounds`) would resolve it" in row
    )
    records = {r["variant"]: r for r in store.read_json(outputs["decisions"])["break_even"]}
    assert records["prune80"]["break_even_inferences"] is None
    assert "within noise" in records["prune80"]["break_even_unknown_because"]
    # int8_of_prune's differences are both told from zero: its number stays, with no reason.
    assert records["int8_of_prune"]["break_even_inferences"] == pytest.approx(34.0 / (3.0 / 1000))
    assert records["int8_of_prune"]["break_even_unknown_because"] is None
    csv = pd.read_csv(outputs["break_even"]).set_index("variant")
    assert pd.isna(csv.loc["prune80", "break_even_inferences"])
    assert csv.loc["prune80", "verdict"] == "cannot be determined with these seeds and rounds"


def test_a_production_difference_within_noise_asks_for_seeds_only():
    from joulebench.report.decisions import break_even_unknown_because

    pair = {"n_pairs": 3, "inference_pairs": 15, "inference_joules_per_1k_clear": True,
            "pipeline_energy_j_clear": False}  # fmt: skip
    assert break_even_unknown_because(pair) == (
        "the energy-to-produce difference is within noise (its 95% interval includes 0); "
        "more seeds (`seeds`) would resolve it"
    )
    one_seed = {**pair, "n_pairs": 1, "pipeline_energy_j_clear": False}
    assert (
        "energy-to-produce difference has no interval (fewer than two pairs)"
        in break_even_unknown_because(one_seed)
    )
    assert break_even_unknown_because({**pair, "pipeline_energy_j_clear": True}) is None


PRINTED_ACCURACY = r"(\d+\.\d\d) (?:\((\d+\.\d\d)-(\d+\.\d\d)\)|(?:±|\$\\pm\$) (\d+\.\d\d))"


def test_printed_accuracy_intervals_are_the_logit_interval_and_stay_within_100_percent(
    hand_made_run, tmp_path
):
    import re

    entries, data_energy = hand_made_run
    table = build_table(entries, VARIANTS, data_energy, CARBON)
    outputs = report_files(tmp_path)
    summary = write_report(table, read_histories(entries, table), {"accuracy_target": 0.95}, outputs)
    bounds = summary.set_index("variant")[["test_accuracy", "test_accuracy_low", "test_accuracy_high"]]
    # Two seeds, 95% and 97%: the plain t-interval, 96.00 ± 12.71, would run to 108.71%.
    low, high = bounds.loc["baseline", ["test_accuracy_low", "test_accuracy_high"]] * 100
    assert high < 100.0 and low < 95.0
    expected = f"96.00 ({low:.2f}-{high:.2f})"
    for key in ("summary", "markdown", "latex"):
        text = outputs[key].read_text()
        assert expected in text, key
        for match in re.finditer(PRINTED_ACCURACY, text):
            mean, low_text, high_text, half_width = match.groups()
            top = float(high_text) if high_text else float(mean) + float(half_width)
            assert top <= 100.0, (key, match.group(0))
    cheapest = store.read_json(outputs["decisions"])["cheapest_meeting_target"]
    assert [r["variant"] for r in cheapest] == ["fp16"]
    assert cheapest[0]["test_accuracy_low"] == pytest.approx(bounds.loc["fp16", "test_accuracy_low"])
    assert cheapest[0]["test_accuracy_high"] == pytest.approx(bounds.loc["fp16", "test_accuracy_high"])
    assert cheapest[0]["test_accuracy_high"] < 1.0 and "test_accuracy_ci95" not in cheapest[0]


def test_summary_says_what_an_estimate_counts_only_where_a_figure_is_estimated(hand_made_run):
    entries, data_energy = hand_made_run
    settings = {"accuracy_target": 0.95}
    _, _, _, estimated = report_of(entries, data_energy, settings)
    assert "**What an estimate counts.**" in estimated
    assert "peak RSS" in estimated and "Idle power and PUE are not included" in estimated
    assert "`estimate.power_per_core_source`" in estimated
    assert "**Comparisons that trade CPU time for wall time depend on the estimation model.**" in estimated
    # Every record of the run measured by a counter, inference included: no such note.
    for entry in entries:
        record = store.read_json(entry["energy"])
        store.write_json(
            entry["energy"], energy_record(record["rule"], record["joules"], record["start_unix"], True)
        )
        store.write_json(
            entry["eval_energy"], energy_record("evaluate_model", 3.0, record["start_unix"] + 0.5, True)
        )
        metrics = store.read_json(entry["metrics"]) | {"inference_energy_source": "nvml-counter"}
        store.write_json(entry["metrics"], metrics)
    measured_data = energy_record("prepare_dataset", 5.0, 0.0, measured=True)
    _, summary, _, measured = report_of(entries, measured_data, settings)
    assert summary["pipeline_energy_measured"].all() and summary["inference_energy_measured"].all()
    assert "Energy figures are **measured**" in measured
    assert "What an estimate counts" not in measured and "estimation model" not in measured
