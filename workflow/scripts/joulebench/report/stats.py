"""Statistics of the report: per-variant means with 95% confidence intervals, and Pareto fronts.

Fronts are computed on the means; the intervals say how far to trust them.
"""

import math

import pandas as pd
from scipy import stats

from joulebench.energy.host_speed import RUN_COLUMNS
from joulebench.variants import BASELINE

CONFIDENCE = 0.95
GROUP = ["dataset", "model", "variant"]

# Columns averaged over seeds with a confidence interval (the quantities a reader compares).
WITH_CI = [
    "test_accuracy",
    "pipeline_energy_j",
    "inference_joules_per_1k",
    "own_energy_j",
    "pipeline_wall_time_s",
]
# Where each row computed (report.training_device, evaluate.evaluate) and the default of records
# that predate the column.
DEVICE_COLUMNS = {
    "training_device": "cpu",
    "training_device_name": "",
    "inference_device": "cpu",
    "inference_device_name": "",
}
# The run's host speed (the same on every row) and the slowest job behind each variant's energy.
HOST_SPEED_COLUMNS = ["pipeline_host_speed_min", *RUN_COLUMNS]
# Columns averaged over seeds, no interval drawn (properties of the architecture or secondary).
MEAN_ONLY = [
    "energy_data_j",
    "energy_train_j",
    "energy_compress_j",
    "energy_evaluate_j",
    "params",
    "nonzero_params",
    "size_bytes",
    "macs",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_per_s",
]


def mean_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float | None, int]:
    """(mean, half-width of the Student-t interval on the mean, n); no interval when n < 2.

    One seed says nothing about the spread, so we give no interval rather than invent one.
    """
    values = [float(v) for v in values if not pd.isna(v)]
    n = len(values)
    if n == 0:
        return math.nan, None, 0
    mean = sum(values) / n
    if n < 2:
        return mean, None, n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = stats.t.ppf((1 + confidence) / 2, df=n - 1) * sd / math.sqrt(n)
    return mean, float(half_width), n


# Accuracies of exactly 0 or 1 have no logit; they are moved this far inside the interval.
LOGIT_EPSILON = 1e-4


def proportion_ci(values, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """(low, high) of a Student-t interval taken on the logit scale and mapped back: it stays in
    [0, 1], as an accuracy does, where the plain t-interval over a few seeds runs past 100%.
    (None, None) where n < 2."""
    logits = []
    for value in values:
        clipped = min(max(float(value), LOGIT_EPSILON), 1 - LOGIT_EPSILON)
        logits.append(math.log(clipped / (1 - clipped)))
    centre, half_width, _ = mean_ci(logits, confidence)
    if half_width is None:
        return None, None
    return (1 / (1 + math.exp(-(centre - half_width))), 1 / (1 + math.exp(-(centre + half_width))))


def accuracy_bounds(row) -> tuple[float | None, float | None]:
    """The accuracy interval the report prints and decisions.json gives: the logit-scale interval
    (test_accuracy_low/high, inside 0-1) widened to reach the mean where the mean lies outside it,
    as the figures' bars are; (None, None) where n = 1 left no interval."""
    low, high = row.get("test_accuracy_low"), row.get("test_accuracy_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return None, None
    mean = row["test_accuracy"]
    return float(min(low, mean)), float(max(high, mean))


def energy_unit(largest_joules: float) -> tuple[float, str]:
    """(divisor, unit) that keeps the largest value readable: J, kJ or MJ."""
    for divisor, unit in ((1e6, "MJ"), (1e3, "kJ")):
        if largest_joules >= 10 * divisor:
            return divisor, unit
    return 1.0, "J"


def pareto_mask(accuracy, cost) -> list[bool]:
    """True where no other point has accuracy >= and cost <= with at least one strictly better.

    Equal points do not dominate each other, so ties are all optimal.
    """
    points = list(zip(accuracy, cost, strict=True))
    mask = []
    for a, c in points:
        dominated = any(a2 >= a and c2 <= c and (a2 > a or c2 < c) for a2, c2 in points)
        mask.append(not dominated)
    return mask


def _flags(group: pd.DataFrame, column: str) -> pd.Series:
    """A flag column of the group as booleans, all False where the table has no such column."""
    if column not in group:
        return pd.Series(False, index=group.index)
    return group[column].fillna(False).astype(bool)


# What each energy figure covers (joulebench.energy.boundary), per row.
BOUNDARY_COLUMNS = ("pipeline_energy_boundary", "inference_energy_boundary")


def _boundary_of(rows: pd.DataFrame, column: str) -> str:
    """Every part the rows' figures in `column` cover, joined (a boundary id); "" where none has one."""
    cells = rows.get(column, pd.Series([], dtype=object)).dropna()
    return "+".join(sorted({kind for cell in cells for kind in str(cell).split("+") if kind}))


# Per-row lists (joulebench.report.columns) each variant's summary joins over its seeds.
JOINED_COLUMNS = (
    "verdict_slow_jobs",
    "pipeline_slow_jobs",
    "verdict_busy_jobs",
    "pipeline_busy_jobs",
    "verdict_busy_rounds",
    "inference_busy_rounds",
)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, variant): n, means, CI half-widths, provenance, Pareto flags."""
    rows = []
    for keys, group in table.groupby(GROUP, sort=True):
        row = dict(zip(GROUP, keys, strict=True))
        row["technique"] = group["technique"].iloc[0]
        row["parent"] = group["parent"].iloc[0]
        row["precision"] = group["precision"].iloc[0]
        row["n"] = len(group)
        for column in WITH_CI:
            mean, half_width, _ = mean_ci(group[column])
            row[column] = mean
            row[f"{column}_ci95"] = half_width
            # Run-to-run coefficient of variation over seeds (None for one seed).
            row[f"{column}_cv"] = group[column].std() / mean if len(group) > 1 and mean else None
        row["test_accuracy_low"], row["test_accuracy_high"] = proportion_ci(group["test_accuracy"])
        for column in MEAN_ONLY:
            if column in group:
                row[column] = group[column].mean()
        row["pipeline_energy_measured"] = bool(group["pipeline_energy_measured"].all())
        # Seeds whose verdicts rest on windows of one side only during which other processes loaded
        # the host enough to move them (energy_columns.verdict_movers), and those jobs and rounds.
        row["busy_host_seeds"] = int(
            (_flags(group, "pipeline_busy_host") | _flags(group, "inference_busy_host")).sum()
        )
        # Seeds with an energy window during which other processes computed on the metered GPU.
        row["busy_gpu_seeds"] = int(
            (_flags(group, "pipeline_busy_gpu") | _flags(group, "inference_busy_gpu")).sum()
        )
        # Seeds whose verdicts rest on a job of one side only that ran on a notably slow host
        # (joulebench.energy.host_speed, energy_columns.host_speed_columns), and those jobs.
        row["slow_host_seeds"] = int(_flags(group, "pipeline_slow_host").sum())
        for column in JOINED_COLUMNS:
            cells = group.get(column, pd.Series([""])).fillna("")
            row[column] = ";".join(dict.fromkeys(job for cell in cells for job in cell.split(";") if job))
        for column in HOST_SPEED_COLUMNS:
            row[column] = group[column].min() if column in group else None
        row["inference_energy_measured"] = not group["inference_energy_source"].str.contains("estimate").any()
        # Where it was made and where it inferred (cpu, cuda, with names): energy compares like for
        # like only within one device class; the figures mark each row's device.
        for column, default in DEVICE_COLUMNS.items():
            row[column] = "+".join(sorted(set(group.get(column, pd.Series([default])).astype(str))))
        row["pipeline_energy_sources"] = "+".join(
            sorted(set("+".join(group["pipeline_energy_sources"]).split("+")))
        )
        for column in BOUNDARY_COLUMNS:
            row[column] = _boundary_of(group, column)
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["pareto_training"] = pareto_mask(summary["test_accuracy"], summary["pipeline_energy_j"])
    summary["pareto_inference"] = pareto_mask(summary["test_accuracy"], summary["inference_joules_per_1k"])
    return summary


# Quantities each variant is compared on against its baseline, seed by seed.
COMPARED = ["pipeline_energy_j", "inference_joules_per_1k", "test_accuracy"]


def device_pair(base: str, variant: str) -> str:
    """'cpu' where both ran on one device class; 'cuda vs cpu' where they crossed devices."""
    return base if base == variant else f"{base} vs {variant}"


def device_label(device: str, name: str) -> str:
    """'CPU (Intel Xeon ...)' or the GPU's name ('GPU' where unknown), as the report names a device."""
    if device == "cpu":
        return f"CPU ({name})" if name else "CPU"
    return name or "GPU"


def devices_of(base: pd.DataFrame, runs: pd.DataFrame, column: str = "inference_device") -> str:
    """device_pair of the baseline's and the variant's runs in one device column."""
    devices = ["+".join(sorted(set(rows.get(column, ["cpu"])))) for rows in (base, runs)]
    return device_pair(*devices)


def pairs_behind(pair, column: str) -> int:
    """How many paired differences a compared column's interval rests on (paired_differences):
    seeds, for inference energy too (`inference_pairs`: the seeds whose interleaved rounds were
    averaged first, round_differences)."""
    if column.startswith("inference"):
        return pair.get("inference_pairs", pair["n_pairs"])
    return pair["n_pairs"]


def resolved(pair, column: str) -> bool:
    """Whether the paired difference in `column` is told from zero: it has an interval (two pairs
    or more) and that interval excludes 0."""
    return pairs_behind(pair, column) >= 2 and bool(pair[f"{column}_clear"])


def round_differences(rounds: pd.DataFrame) -> dict[tuple, dict]:
    """Inference energy differences from the interleaved comparisons, per (dataset, model,
    variant), at the level of the seed: the variant's joules per 1k samples minus the baseline's
    in the same round of the same seed's job, averaged over that job's rounds; the difference is
    the mean of these seed-level means and its interval the Student-t over seeds.

    The rounds of one job share its models (trained from one seed) and its host's state, and the
    seed moves the difference by more than the rounds scatter within a job: pooled as if
    independent, the rounds would give an interval several times too narrow. Averaging within the
    seed first is the nested model's estimate with equal rounds per seed. `inference_pairs` counts
    the seeds behind the interval, `inference_rounds_per_seed` the fewest rounds any of them paired.
    """
    column = "inference_joules_per_1k"
    found = {}
    for (dataset, model), group in rounds.groupby(["dataset", "model"], sort=True):
        base = group[group["variant"] == BASELINE].set_index(["seed", "round"])["joules_per_1k"]
        for variant, runs in group[group["variant"] != BASELINE].groupby("variant", sort=True):
            runs = runs.set_index(["seed", "round"])["joules_per_1k"]
            keys = runs.index.intersection(base.index)
            by_seed = (runs.loc[keys] - base.loc[keys]).groupby(level="seed")
            diff, half_width, seeds = mean_ci(by_seed.mean())
            baseline = base.loc[keys].groupby(level="seed").mean().mean()
            found[(dataset, model, variant)] = {
                "inference_pairs": seeds,
                "inference_rounds_per_seed": int(by_seed.size().min()) if seeds else 0,
                f"{column}_diff": diff,
                f"{column}_diff_ci95": half_width,
                f"{column}_change": diff / baseline,
                f"{column}_clear": half_width is not None and abs(diff) > half_width,
            }
    return found


def paired_differences(table: pd.DataFrame, rounds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each variant minus the baseline of the same dataset and model, paired by seed (a variant's
    seed s is made from, or trained beside, baseline seed s, so shared noise cancels).

    Per compared column: the mean difference (`_diff`), the half-width of its 95% Student-t interval
    (`_diff_ci95`, None for one pair), the change relative to the baseline mean (`_change`), and
    `_clear`: the interval excludes zero. Where it does not, the data cannot tell the two apart.
    With `rounds` (the interleaved comparisons), the inference columns rest on them instead: per
    seed, the mean of its per-round pairs, then the Student-t over seeds (round_differences);
    `inference_pairs` counts the seeds behind them, `inference_rounds_per_seed` the rounds each
    seed averages (1 without `rounds`: the seed's single inference figure).
    """
    by_round = round_differences(rounds) if rounds is not None and not rounds.empty else {}
    rows = []
    for (dataset, model), group in table.groupby(["dataset", "model"], sort=True):
        base = group[group["variant"] == BASELINE].set_index("seed")
        if base.empty:
            continue
        for variant, runs in group[group["variant"] != BASELINE].groupby("variant", sort=True):
            runs = runs.set_index("seed")
            seeds = runs.index.intersection(base.index)
            row = {"dataset": dataset, "model": model, "variant": variant, "n_pairs": len(seeds)}
            row["inference_devices"] = devices_of(base, runs)
            row["training_devices"] = devices_of(base, runs, "training_device")
            # Like devices, boundaries: both sides' figures must cover the same parts.
            row["pipeline_boundaries"] = device_pair(
                _boundary_of(base, "pipeline_energy_boundary"), _boundary_of(runs, "pipeline_energy_boundary")
            )
            row["inference_boundaries"] = device_pair(
                _boundary_of(base, "inference_energy_boundary"),
                _boundary_of(runs, "inference_energy_boundary"),
            )
            for column in COMPARED:
                diff, half_width, _ = mean_ci(runs.loc[seeds, column] - base.loc[seeds, column])
                row[f"{column}_diff"] = diff
                row[f"{column}_diff_ci95"] = half_width
                row[f"{column}_change"] = diff / base.loc[seeds, column].mean()
                row[f"{column}_clear"] = half_width is not None and abs(diff) > half_width
            row["inference_pairs"] = len(seeds)
            row["inference_rounds_per_seed"] = 1
            row.update(by_round.get((dataset, model, variant), {}))
            rows.append(row)
    columns = [
        "dataset",
        "model",
        "variant",
        "n_pairs",
        "inference_pairs",
        "inference_rounds_per_seed",
        "inference_devices",
        "training_devices",
        "pipeline_boundaries",
        "inference_boundaries",
    ]
    for column in COMPARED:
        columns += [f"{column}_{part}" for part in ("diff", "diff_ci95", "change", "clear")]
    return pd.DataFrame(rows, columns=columns)
