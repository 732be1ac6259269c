"""How far to trust the numbers: what the joules cover, which windows other work loaded, what an
estimate counts, the measurement protocol, what the seeds resolve and how fast each host ran."""

import pandas as pd

from joulebench.energy import host_speed
from joulebench.energy.boundary import OUTSIDE_THE_BOUNDARY, PART_COVERS
from joulebench.energy.contention import BUSY_HOST_SHARE
from joulebench.report.stats import BOUNDARY_COLUMNS
from joulebench.report.tables import markdown_table


def boundary_markdown(summary: pd.DataFrame) -> list[str]:
    """What this report's joules cover, part by part, and what they leave out (joulebench.energy.boundary)."""
    kinds = set()
    for column in BOUNDARY_COLUMNS:
        for cell in summary.get(column, pd.Series([], dtype=object)).dropna():
            kinds |= {kind for kind in str(cell).split("+") if kind}
    if not kinds:
        return []
    covers = "; ".join(f"{kind}, {PART_COVERS.get(kind, 'as its record says')}" for kind in sorted(kinds))
    return [
        f"**What the joules cover.** {covers}. They leave out {', '.join(OUTSIDE_THE_BOUNDARY)}. "
        "Each record says which parts its own figure covers (`boundary`); results.csv gives "
        "`pipeline_energy_boundary` and `inference_energy_boundary`, and a verdict comparing figures "
        "that cover different parts says so.",
        "",
    ]


def _variants_flagged(summary: pd.DataFrame, seeds_column: str) -> str | None:
    """'prune80 (1 of 3 seeds), ...' for the variants with seeds flagged in `seeds_column`, or None."""
    flagged = summary[summary.get(seeds_column, pd.Series(0, index=summary.index)) > 0]
    if flagged.empty:
        return None
    return ", ".join(
        f"{row['variant']} ({row[seeds_column]} of {row['n']} seeds)" for _, row in flagged.iterrows()
    )


def busy_gpu_note(summary: pd.DataFrame) -> list[str]:
    """A warning naming the variants whose energy was taken while other processes used the GPU."""
    named = _variants_flagged(summary, "busy_gpu_seeds")
    if named is None:
        return []
    return [
        f"**Busy GPU**: other processes computed on the metered GPU during energy windows of {named}. "
        "NVML's counter counts the whole GPU, so their work is in these figures: rerun those rules with "
        "the GPU to yourself before trusting them. Each record's windows list the processes "
        "(`other_gpu_processes`); columns `pipeline_busy_gpu` and `inference_busy_gpu` of results.csv "
        "name the rows.",
        "",
    ]


# The summary's per-variant lists of busy jobs and rounds (report_stats.JOINED_COLUMNS).
BUSY_LISTS = ("pipeline_busy_jobs", "inference_busy_rounds")


def busy_host_note(summary: pd.DataFrame) -> list[str]:
    """A warning naming the variants whose comparison with the baseline rests on energy windows of
    one side, taken while other processes loaded the host, that could move it
    (energy_columns.verdict_movers); a line where such windows ran but none could."""
    load = f"other processes used more than {BUSY_HOST_SHARE:.0%} of the host's CPUs"
    listed = "columns `pipeline_busy_jobs` and `inference_busy_rounds` of results.csv"
    flagged = summary[summary.get("busy_host_seeds", pd.Series(0, index=summary.index)) > 0]
    if flagged.empty:
        cells = [summary.get(column, pd.Series("", index=summary.index)).fillna("") for column in BUSY_LISTS]
        if not any(cell.astype(bool).any() for cell in cells):
            return []
        return [
            f"During some energy windows {load} ({listed}, each with its share of the row's energy), "
            "but none can move a verdict: each is shared by both sides of its comparison with the "
            "baseline, or carries less energy than the difference it sits in.",
            "",
        ]
    named = "; ".join(
        f"{row['variant']} ({row['busy_host_seeds']} of {row['n']} seeds: {_busy_windows(row)})"
        for _, row in flagged.iterrows()
    )
    return [
        f"**Busy host**: the comparison with the baseline of {named} rests on energy windows that "
        f"only one side of it ran while {load}, and that carry at least the difference between the "
        "two, so they can move the verdict. Their energy is inflated (counters see the whole device; "
        "CPU-time estimates include threads waiting for cores): rerun those rules on an idle machine "
        "(`--forcerun <rule>`) before trusting them. A busy job both sides share (the data jobs, the "
        "training a compressed model starts from), or one that carries less energy than the "
        f"difference, cannot move it and is not flagged; {listed} list every busy job and round of a "
        "row with its share of the row's energy.",
        "",
    ]


def estimate_note(summary: pd.DataFrame) -> list[str]:
    """What an estimated figure counts, and which comparisons rest on the model; only where a
    figure behind the summary is estimated."""
    measured = (
        summary["pipeline_energy_measured"].all()
        and summary.get("inference_energy_measured", pd.Series([True])).all()
    )
    if measured:
        return []
    return [
        "**What an estimate counts.** CPU-seconds x power per core (each record's "
        "`estimate.power_per_core_w`; `estimate.power_per_core_source` names the row of CodeCarbon's TDP "
        "table for the host's CPU model, Green Algorithms' generic 12 W, or the configuration), plus "
        "wall seconds x memory x `estimate.memory_w_per_gb`, with memory counted as the process's peak "
        "RSS (Green Algorithms counts the memory available to the job). Idle power and PUE are not "
        "included (PUE enters the carbon figures only). docs/trackers.md converts these figures into "
        "what CodeCarbon, carbontracker, eco2ai or the Green Algorithms calculator would print.",
        "",
        "**Comparisons that trade CPU time for wall time depend on the estimation model.** Where the "
        "CPU is estimated, a variant that uses more threads, DataLoader workers or data-parallel "
        "processes to finish sooner is charged for its CPU-seconds at a fixed power per core and for "
        "nothing while the host idles or waits, so its verdict follows the model, not the hardware: "
        "confirm it on a host with energy counters (RAPL) before relying on it.",
        "",
    ]


def _busy_windows(row) -> str:
    """The jobs and inference rounds that can move a variant's verdicts, joined for the text."""
    cells = [row.get(column) for column in ("verdict_busy_jobs", "verdict_busy_rounds")]
    return ", ".join(job for cell in cells if isinstance(cell, str) for job in cell.split(";") if job)


def protocol_paragraph(protocol: dict | None) -> list[str]:
    """The measurement protocol of inference energy, in one paragraph (joulebench.evaluate.protocol)."""
    if not protocol:
        return []
    return [
        "## Measurement protocol",
        "",
        f"Inference energy: every variant of a model and seed is measured in one job "
        f"(`compare_inference`), in {protocol['rounds']} interleaved rounds whose order is shuffled "
        f"each round, each window preceded by a random pause of up to {protocol['max_gap_seconds']:g} s; "
        f"after {protocol['warmup_seconds']:g} s of unmeasured warm-up, a window repeats whole "
        f"test-set passes for at least {protocol['min_window_seconds']:g} s and {protocol['min_passes']} "
        f"pass(es), on {protocol['threads']} CPU thread(s). A variant's figure is the median over "
        "rounds (IQR in results.csv). Its difference from the baseline is taken at the level of the "
        "seed: per seed, the mean of that job's per-round paired differences; then the mean of these "
        "over seeds, with a Student-t interval over seeds (`inference_pairs` seeds, "
        "`inference_rounds_per_seed` rounds each, in differences.csv). The rounds of one job share "
        "its models and host, so they are not independent pairs; the verdicts and the break-even use "
        f"this one difference. Protocol: {protocol['reference']}. Energy to produce is one window per "
        "rule and per epoch.",
        "",
    ]


def resolution_markdown(summary: pd.DataFrame, differences: pd.DataFrame) -> list[str]:
    """Run-to-run variation per variant, and the smallest difference the data can resolve: the
    half-width of the 95% interval of its paired difference (below it, a change is noise)."""
    header = [
        "Model",
        "Variant",
        "n",
        "CV, produce",
        "CV, inference",
        "Resolves, produce (J)",
        "Resolves, inference (J/1k)",
    ]
    rows = []
    for _, row in summary.iterrows():
        match = differences[
            (differences["model"] == row["model"]) & (differences["variant"] == row["variant"])
        ]
        pair = match.iloc[0] if not match.empty else None

        def resolves(column, pair=pair):
            width = None if pair is None else pair[f"{column}_diff_ci95"]
            return "—" if width is None or pd.isna(width) else f"±{width:,.4g}"

        def cv(column, row=row):
            value = row.get(f"{column}_cv")
            return "—" if value is None or pd.isna(value) else f"{value:.1%}"

        rows.append(
            [
                row["model"],
                row["variant"],
                str(row["n"]),
                cv("pipeline_energy_j"),
                cv("inference_joules_per_1k"),
                resolves("pipeline_energy_j"),
                resolves("inference_joules_per_1k"),
            ]
        )
    return [
        "## Repeatability and resolution",
        "",
        "Run-to-run coefficient of variation over seeds, and the resolution of each comparison with "
        "the baseline: the half-width of the 95% interval of the paired difference, over seeds (for "
        "inference, over the seeds' means of their interleaved rounds). A difference smaller than "
        "that cannot be told from noise with these seeds and rounds; to resolve a smaller one, add "
        "seeds (`seeds`), or for inference rounds (`evaluation.rounds`), which narrow only the "
        "scatter within a seed, not the spread between seeds.",
        "",
        markdown_table(header, rows),
        "",
    ]


def host_speed_markdown(summary: pd.DataFrame) -> list[str]:
    """The run's host speed (joulebench.energy.host_speed) and the variants whose energy to produce
    includes a job on a host notably slower than the run's median."""
    first = summary.iloc[0]
    intro = (
        "**Host speed.** These intervals are within-run: the seeds of one run share the host's state, "
        "so they do not cover the host running faster or slower from one run to the next (a VM's CPU "
        "speed, steal time), which moves CPU-time estimates with it."
    )
    median = first.get("run_host_speed_median")
    if median is None or pd.isna(median):
        return [f"{intro} These records carry no host-speed index (`{host_speed.REFERENCE}`).", ""]
    spread = (
        f"median {median:,.0f} units/s over {int(first['run_host_speed_n'])} jobs, IQR "
        f"{first['run_host_speed_iqr']:,.0f} ({first['run_host_speed_iqr'] / median:.1%} of the median), "
        f"range {first['run_host_speed_min']:,.0f}-{first['run_host_speed_max']:,.0f}"
    )
    slow = summary[summary.get("slow_host_seeds", pd.Series(0, index=summary.index)) > 0]
    threshold = f"{host_speed.SLOW_HOST_RATIO:.0%} of the run's median"
    any_slow = summary.get("pipeline_slow_jobs", pd.Series("", index=summary.index)).fillna("").astype(bool)
    if slow.empty and any_slow.any():
        flagged = (
            f"Jobs under {threshold} ran (column `pipeline_slow_jobs` of results.csv), but each is "
            "shared by both sides of every comparison with the baseline it is in, so none can move a "
            "verdict."
        )
    elif slow.empty:
        flagged = f"No job ran under {threshold}."
    else:
        named = "; ".join(
            f"{row['variant']} ({row['slow_host_seeds']} of {row['n']} seeds: "
            f"{row['verdict_slow_jobs'].replace(';', ', ')})"
            for _, row in slow.iterrows()
        )
        flagged = (
            f"**Slow host**: the comparison with the baseline of {named} rests on a job under "
            f"{threshold} (10% slower: below the slowdown, about 15%, at which two runs' intervals "
            "stop covering each other, and above the index's spread on a quiet host) that only one "
            "side of it ran, so it can move the verdict: rerun that job (`--forcerun <rule>`) on a "
            "quiet host before trusting it. A "
            "slow job both sides share (the data jobs, the training a compressed model starts from) "
            "cancels in the comparison and is not flagged; column `pipeline_slow_jobs` of results.csv "
            "lists every slow job of a row's lineage with its share of the row's energy to produce."
        )
    return [
        f"{intro} Before each job's energy window opens (never charged to it), a fixed reference "
        f"workload (`{host_speed.REFERENCE}`, about 20 ms) gives this host's speed: {spread}. Two runs "
        "whose medians differ ran on a faster or slower host; `joulebench-compare` compares two "
        f"runs' intervals and indices. {flagged}",
        "",
    ]
