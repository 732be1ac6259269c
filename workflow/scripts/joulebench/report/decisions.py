"""The decisions the report exists to answer, on per-variant means (see report_stats.summarize).

- cheapest variant that meets an accuracy target: min energy s.t. accuracy >= target;
- most accurate variant within an energy budget: max accuracy s.t. energy <= budget;
- break-even: after how many inferences a model that cost more to produce has paid that back
  through cheaper inference (on the paired differences the verdicts use, not on these means).
"""

import math
from dataclasses import dataclass

import pandas as pd

from joulebench.report.stats import accuracy_bounds, device_pair, pairs_behind, resolved
from joulebench.variants import BASELINE

ACCURACY = "test_accuracy"
ENERGY = "pipeline_energy_j"


def cheapest_meeting_target(summary: pd.DataFrame, accuracy_target: float) -> pd.DataFrame:
    """Rows with accuracy >= target and the least energy to produce; empty when none qualifies.

    Equal energy is broken by higher accuracy; rows still tied are all returned (sorted by name),
    because the data cannot tell them apart.
    """
    meeting = summary[summary[ACCURACY] >= accuracy_target]
    if meeting.empty:
        return meeting
    cheapest = meeting[meeting[ENERGY] == meeting[ENERGY].min()]
    best = cheapest[cheapest[ACCURACY] == cheapest[ACCURACY].max()]
    return best.sort_values(["model", "variant"])


def most_accurate_within_budget(summary: pd.DataFrame, energy_budget_j: float) -> pd.DataFrame:
    """Rows with energy <= budget and the highest accuracy; ties broken by less energy, then all kept."""
    within = summary[summary[ENERGY] <= energy_budget_j]
    if within.empty:
        return within
    accurate = within[within[ACCURACY] == within[ACCURACY].max()]
    best = accurate[accurate[ENERGY] == accurate[ENERGY].min()]
    return best.sort_values(["model", "variant"])


DECISION_COLUMNS = [
    "dataset",
    "model",
    "variant",
    "n",
    ACCURACY,
    f"{ACCURACY}_low",
    f"{ACCURACY}_high",
    ENERGY,
    f"{ENERGY}_ci95",
    "pipeline_energy_measured",
]


def _json_ready(row: pd.Series) -> dict:
    """One row as JSON: numpy scalars to Python, missing values (NaN) to None."""
    record = {}
    for column, value in row.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            record[column] = None
        else:
            record[column] = value.item() if hasattr(value, "item") else value
    return record


def _records(rows: pd.DataFrame, extra: tuple = ()) -> list[dict]:
    """JSON-ready rows of DECISION_COLUMNS (a summary without an accuracy interval gives None
    there), accuracy low/high as the report prints them (report_stats.accuracy_bounds)."""
    records = []
    for _, row in rows.reindex(columns=[*DECISION_COLUMNS, *extra]).iterrows():
        row[f"{ACCURACY}_low"], row[f"{ACCURACY}_high"] = accuracy_bounds(row)
        records.append(_json_ready(row))
    return records


def decide(summary: pd.DataFrame, settings: dict) -> dict:
    """Both decisions for config `report` (either key may be absent: that decision is skipped)."""
    target = settings.get("accuracy_target")
    budget = settings.get("energy_budget_j")
    return {
        "accuracy_target": target,
        "cheapest_meeting_target": _records(cheapest_meeting_target(summary, target)) if target else [],
        "energy_budget_j": budget,
        "most_accurate_within_budget": _records(most_accurate_within_budget(summary, budget))
        if budget
        else [],
        "statistic": "mean over seeds",
    }


@dataclass(frozen=True)
class BreakEven:
    """When a variant's total energy (produce + N inferences) falls below the baseline's.

    `inferences` is N* (0 when the variant is never behind); None when it never catches up.
    """

    inferences: float | None
    extra_produce_j: float
    saving_per_inference_j: float

    @property
    def verdict(self) -> str:
        if self.inferences is None:
            if self.extra_produce_j < 0:
                ahead_for = self.extra_produce_j / self.saving_per_inference_j
                return (
                    "never: cheaper to produce but dearer per inference, so it is ahead only for "
                    f"the first {math.floor(ahead_for):,} inferences"
                )
            return "never: it does not save inference energy"
        if self.inferences == 0:
            return "immediately: it costs no more to produce and no more per inference"
        # Round first: 32 / ((4.1 - 2.1) / 1000) is 16000.000000000004 in floating point, not 16,001.
        return f"after {math.ceil(round(self.inferences, 6)):,} inferences"


def break_even(
    produce_variant_j: float,
    produce_baseline_j: float,
    inference_baseline_j: float,
    inference_variant_j: float,
) -> BreakEven:
    """N* = (E_produce(variant) - E_produce(baseline)) / (E_inf(baseline) - E_inf(variant)), per sample.

    0 when the variant is never behind; None ("never") when it does not save inference energy
    yet cost more to produce, or saves nothing per inference at all.
    """
    return break_even_of(produce_variant_j - produce_baseline_j, inference_baseline_j - inference_variant_j)


def break_even_of(extra: float, saving: float) -> BreakEven:
    """break_even from its two differences: the extra energy to produce and the saving per sample."""
    if extra <= 0 and saving >= 0:
        return BreakEven(0.0, extra, saving)
    if saving <= 0:
        return BreakEven(None, extra, saving)
    return BreakEven(extra / saving, extra, saving)


def differences_behind(pair, base, row) -> tuple[float, float]:
    """(extra energy to produce in J, inference saving per sample in J) of a break-even: the paired
    differences the verdicts rest on (`pair`, a paired_differences row: seed-level, inference from
    the interleaved rounds), so a break-even and its verdict never disagree on the sign of a saving.
    Where no seed of the variant is paired with the baseline (`pair` None), the difference of the
    summary's means (`base`, `row`)."""
    if pair is None:
        saving_per_1k = base["inference_joules_per_1k"] - row["inference_joules_per_1k"]
        return row[ENERGY] - base[ENERGY], saving_per_1k / 1000
    return float(pair[f"{ENERGY}_diff"]), -float(pair["inference_joules_per_1k_diff"]) / 1000


UNDETERMINED = "cannot be determined with these seeds and rounds"
# The differences a break-even rests on: (name in the reason, compared column, what narrows its
# interval). Both intervals are over seeds; rounds narrow only the within-seed part of inference's.
BREAK_EVEN_DIFFERENCES = (
    (
        "inference energy",
        "inference_joules_per_1k",
        ("seeds (`seeds`)", "inference rounds (`evaluation.rounds`)"),
    ),
    ("energy-to-produce", "pipeline_energy_j", ("seeds (`seeds`)",)),
)


def _unresolved_phrase(what: str, pair, column: str) -> str:
    if pairs_behind(pair, column) < 2:
        return f"the {what} difference has no interval (fewer than two pairs)"
    return f"the {what} difference is within noise (its 95% interval includes 0)"


def break_even_unknown_because(pair) -> str | None:
    """Why a break-even cannot be determined, and what would resolve it; None where both
    differences it rests on are told from zero (`pair`: a paired_differences row, None where the
    variant has no seed paired with the baseline)."""
    if pair is None:
        return "no seed of the variant is paired with a baseline seed: run both on the same `seeds`"
    phrases, remedies = [], []
    for what, column, adds in BREAK_EVEN_DIFFERENCES:
        if not resolved(pair, column):
            phrases.append(_unresolved_phrase(what, pair, column))
            remedies += [remedy for remedy in adds if remedy not in remedies]
    if not phrases:
        return None
    return f"{' and '.join(phrases)}; more {' or more '.join(remedies)} would resolve it"


BREAK_EVEN_COLUMNS = [
    "dataset",
    "model",
    "variant",
    "inference_devices",
    "training_devices",
    "extra_produce_j",
    "saving_per_inference_j",
    "break_even_inferences",
    "verdict",
    "break_even_unknown_because",
]


def break_even_table(summary: pd.DataFrame, differences: pd.DataFrame) -> pd.DataFrame:
    """Break-even of every variant against the baseline of the same dataset and model.

    A break-even is a ratio of two differences, the paired ones of the verdicts (`differences`:
    report_stats.paired_differences; see differences_behind); where either cannot be told from
    zero, neither can the ratio: such a row has no `break_even_inferences` and says why in
    `break_even_unknown_because`.
    """
    pairs = {(row["dataset"], row["model"], row["variant"]): row for _, row in differences.iterrows()}
    rows = []
    for (dataset, model), group in summary.groupby(["dataset", "model"], sort=True):
        base = group[group["variant"] == BASELINE]
        if base.empty:
            continue
        base = base.iloc[0]
        for _, row in group[group["variant"] != BASELINE].iterrows():
            pair = pairs.get((dataset, model, row["variant"]))
            result = break_even_of(*differences_behind(pair, base, row))
            unknown_because = break_even_unknown_because(pair)
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "variant": row["variant"],
                    # "cuda vs cpu" where the two infer on different devices: not like for like.
                    "inference_devices": device_pair(
                        base.get("inference_device", "cpu"), row.get("inference_device", "cpu")
                    ),
                    "training_devices": device_pair(
                        base.get("training_device", "cpu"), row.get("training_device", "cpu")
                    ),
                    "extra_produce_j": result.extra_produce_j,
                    "saving_per_inference_j": result.saving_per_inference_j,
                    "break_even_inferences": None if unknown_because else result.inferences,
                    "verdict": UNDETERMINED if unknown_because else result.verdict,
                    "break_even_unknown_because": unknown_because,
                }
            )
    return pd.DataFrame(rows, columns=BREAK_EVEN_COLUMNS)


def break_even_records(table: pd.DataFrame) -> list[dict]:
    """The break-even table as JSON (decisions.json): null where there is no number, and for an
    undetermined one the reason beside it."""
    return [_json_ready(row) for _, row in table.iterrows()]


# Hardware-axis decisions. config report.constraints keys -> the summary column each one bounds.
CONSTRAINT_COLUMNS = {
    "wall_time_s": "pipeline_wall_time_s",
    "latency_p50_ms": "latency_p50_ms",
    "latency_p95_ms": "latency_p95_ms",
    "inference_joules_per_1k": "inference_joules_per_1k",
    "size_bytes": "size_bytes",
}
WALL_TIME = "pipeline_wall_time_s"
COST_FORMULA = "cost = eta * E + (1 - eta) * max_power_w * T"


def constraint_violations(row, limits: dict) -> list[str]:
    """Why a row misses the constraints ("wall_time_s 75.2 > 60"); empty when it meets them all.

    A quantity the row does not have (NaN) cannot be shown to meet its bound, so it fails it.
    """
    reasons = []
    for key, limit in limits.items():
        value = row[CONSTRAINT_COLUMNS[key]]
        if pd.isna(value):
            reasons.append(f"{key} unknown")
        elif value > limit:
            reasons.append(f"{key} {value:.4g} > {limit:g}")
    return reasons


def cheapest_under_constraints(summary: pd.DataFrame, limits: dict) -> tuple[pd.DataFrame, list[dict]]:
    """(rows with the least energy to produce among those meeting every limit, and each row's
    eligibility with its reasons). Ties: more accurate first, rows still tied all kept."""
    verdicts, eligible = [], []
    for index, row in summary.iterrows():
        reasons = constraint_violations(row, limits)
        verdicts.append(
            {"model": row["model"], "variant": row["variant"], "eligible": not reasons, "reasons": reasons}
        )
        if not reasons:
            eligible.append(index)
    meeting = summary.loc[eligible]
    if meeting.empty:
        return meeting, verdicts
    cheapest = meeting[meeting[ENERGY] == meeting[ENERGY].min()]
    best = cheapest[cheapest[ACCURACY] == cheapest[ACCURACY].max()]
    return best.sort_values(["model", "variant"]), verdicts


def time_energy_cost(energy_j, wall_time_s, eta: float, max_power_w: float):
    """Zeus's cost metric (You, Chung & Chowdhury, NSDI 2023): eta x E + (1 - eta) x MaxPower x T,
    in joules. eta = 1 counts energy only; eta = 0 counts time only, priced at max_power_w."""
    return eta * energy_j + (1 - eta) * max_power_w * wall_time_s


def hardware_decisions(summary: pd.DataFrame, settings: dict) -> dict:
    """The decisions of config report.constraints and report.eta (None where not configured)."""
    decisions = {"constraints": None, "time_energy_cost": None}
    limits = settings.get("constraints")
    if limits:
        best, verdicts = cheapest_under_constraints(summary, limits)
        decisions["constraints"] = {
            "limits": dict(limits),
            "cheapest_meeting_constraints": _records(best, tuple(CONSTRAINT_COLUMNS[k] for k in limits)),
            "eligible": [v for v in verdicts if v["eligible"]],
            "ineligible": [v for v in verdicts if not v["eligible"]],
        }
    if settings.get("eta") is not None:
        eta, max_power_w = settings["eta"], settings["max_power_w"]
        costs = summary.assign(
            time_energy_cost_j=time_energy_cost(summary[ENERGY], summary[WALL_TIME], eta, max_power_w)
        ).sort_values(["time_energy_cost_j", "model", "variant"])
        lowest = costs[costs["time_energy_cost_j"] == costs["time_energy_cost_j"].min()]
        decisions["time_energy_cost"] = {
            "eta": eta,
            "max_power_w": max_power_w,
            "formula": f"{COST_FORMULA}, E = {ENERGY}, T = {WALL_TIME}",
            "lowest_cost": [
                {**record, "time_energy_cost_j": float(cost)}
                for record, cost in zip(
                    _records(lowest, (WALL_TIME,)), lowest["time_energy_cost_j"], strict=True
                )
            ],
            "ranking": [
                {
                    "model": row["model"],
                    "variant": row["variant"],
                    ENERGY: float(row[ENERGY]),
                    WALL_TIME: float(row[WALL_TIME]),
                    "time_energy_cost_j": float(row["time_energy_cost_j"]),
                }
                for _, row in costs.iterrows()
            ],
        }
    return decisions
