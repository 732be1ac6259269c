"""The plain-language summary (summary.md): decisions, verdicts, break-even, the measurement
protocol, repeatability and resolution, host speed, data diversity, and the results table
(rendered by report_tables, so summary.md and table.md never disagree).
"""

import math

import pandas as pd

from joulebench.energy import host_speed
from joulebench.energy.boundary import OUTSIDE_THE_BOUNDARY, PART_COVERS
from joulebench.energy.contention import BUSY_HOST_SHARE
from joulebench.report.stats import BOUNDARY_COLUMNS, device_label, pairs_behind
from joulebench.report.tables import energy_sources, markdown_table, markdown_with_notes, paper_table


def _change_phrase(pair, column: str, subject: str) -> str:
    """'saves 22% of <subject>', 'does **not** save <subject> (+16%)', or, where the paired
    interval includes zero, that the seeds cannot tell the variant from the baseline."""
    change = pair[f"{column}_change"]
    if pairs_behind(pair, column) < 2:
        qualifier = " (one seed, no interval)"
    elif not pair[f"{column}_clear"]:
        return f"no clear difference in {subject} ({change:+.0%}, but the 95% interval includes 0)"
    else:
        qualifier = ""
    if change < 0:
        return f"saves {-change:.0%} of {subject}{qualifier}"
    return f"does **not** save {subject} ({change:+.0%}){qualifier}"


def crosses_devices(row, column: str) -> bool:
    """Whether a device pair (report_stats.device_pair) compares two device classes."""
    return " vs " in str(row.get(column, ""))


def verdict(pair) -> str:
    """One sentence per variant from its paired differences with the baseline (paired_differences):
    does it save energy to produce, inference energy, at what accuracy, and can the seeds tell?"""
    produce = _change_phrase(pair, "pipeline_energy_j", "the energy to produce")
    if crosses_devices(pair, "training_devices"):
        produce += f" (across devices: trained on {pair['training_devices']})"
    if crosses_devices(pair, "pipeline_boundaries"):
        produce += f" (not like for like: the figures cover {pair['pipeline_boundaries']})"
    inference = _change_phrase(pair, "inference_joules_per_1k", "inference energy")
    if crosses_devices(pair, "inference_devices"):
        inference += f" (not like for like: inference on {pair['inference_devices']})"
    elif crosses_devices(pair, "inference_boundaries"):
        inference += f" (not like for like: the figures cover {pair['inference_boundaries']})"
    accuracy = f"accuracy {pair['test_accuracy_diff'] * 100:+.2f}"
    if pair["test_accuracy_diff_ci95"] is not None and not math.isnan(pair["test_accuracy_diff_ci95"]):
        accuracy += f" ± {pair['test_accuracy_diff_ci95'] * 100:.2f}"
    return f"- **{pair['variant']}** ({pair['model']}) {produce}, {inference}, {accuracy} points."


def _variant_fact(row) -> str:
    return (
        f"**{row['model']}/{row['variant']}**: {row['test_accuracy'] * 100:.2f}% accuracy, "
        f"{row['pipeline_energy_j']:,.1f} J to produce (n={row['n']})"
    )


def _decision(winners: list, found: str, missed: str, fallback: str, fallback_row) -> str:
    """One decision line: the winning variants, or that none qualifies and the nearest one."""
    if winners:
        return f"- {found}: " + "; ".join(_variant_fact(row) for row in winners) + "."
    return f"- **{missed}**; {fallback} {_variant_fact(fallback_row)}."


def decisions_markdown(decisions: dict, summary: pd.DataFrame) -> list[str]:
    lines = ["## Decisions", ""]
    target = decisions.get("accuracy_target")
    if target is None:
        lines.append("- No accuracy target configured (`report.accuracy_target`).")
    else:
        lines.append(
            _decision(
                decisions["cheapest_meeting_target"],
                f"Cheapest variant reaching {target * 100:.1f}% accuracy",
                f"No variant reaches {target * 100:.1f}% accuracy",
                "the most accurate is",
                summary.loc[summary["test_accuracy"].idxmax()],
            )
        )
    budget = decisions.get("energy_budget_j")
    if budget is None:
        lines.append("- No energy budget configured (`report.energy_budget_j`).")
    else:
        lines.append(
            _decision(
                decisions["most_accurate_within_budget"],
                f"Most accurate variant within {budget:,.1f} J to produce",
                f"No variant can be produced within {budget:,.1f} J",
                "the cheapest is",
                summary.loc[summary["pipeline_energy_j"].idxmin()],
            )
        )
    lines += hardware_decisions_markdown(decisions)
    lines += devices_markdown(summary)
    lines += [
        "",
        "Decisions use means over seeds; see the confidence intervals below before relying on them.",
        "",
    ]
    return lines


def devices_markdown(summary: pd.DataFrame) -> list[str]:
    """Where the variants were trained, when they were not all on one device: the decisions above
    then weigh energy measured on different devices against each other."""
    if summary.get("training_device", pd.Series(["cpu"])).nunique() < 2:
        return []
    by_device = {}
    for _, row in summary.iterrows():
        key = (row["training_device"], row["training_device_name"])
        by_device.setdefault(key, []).append(f"{row['model']}/{row['variant']}")
    named = "; ".join(
        f"{device_label(device, name)}: {', '.join(rows)}"
        for (device, name), rows in sorted(by_device.items())
    )
    return [f"- **Across devices**: the decisions compare variants trained on different devices ({named})."]


def hardware_decisions_markdown(decisions: dict) -> list[str]:
    """The constrained decision and the time-energy cost ranking (report.constraints, report.eta)."""
    lines = []
    constraints = decisions.get("constraints")
    if constraints:
        bounds = ", ".join(f"{key} <= {limit:g}" for key, limit in constraints["limits"].items())
        winners = constraints["cheapest_meeting_constraints"]
        if winners:
            named = "; ".join(
                f"**{w['model']}/{w['variant']}**, {w['pipeline_energy_j']:,.1f} J to produce"
                for w in winners
            )
            lines.append(f"- Least energy to produce with {bounds}: {named}.")
        else:
            lines.append(f"- **No variant meets {bounds}**.")
        eligible = ", ".join(f"{v['model']}/{v['variant']}" for v in constraints["eligible"]) or "none"
        lines.append(f"  - Eligible: {eligible}.")
        for verdict in constraints["ineligible"]:
            lines.append(
                f"  - Not eligible: {verdict['model']}/{verdict['variant']} "
                f"({'; '.join(verdict['reasons'])})."
            )
    cost = decisions.get("time_energy_cost")
    if cost:
        lowest = "; ".join(
            f"**{r['model']}/{r['variant']}** ({r['time_energy_cost_j']:,.1f} J)" for r in cost["lowest_cost"]
        )
        lines.append(
            f"- Lowest time-energy cost (Zeus), cost = eta x E + (1 - eta) x MaxPower x T with "
            f"eta = {cost['eta']:g}, MaxPower = {cost['max_power_w']:g} W, E the energy and T the wall "
            f"time to produce the model: {lowest}."
        )
    return lines


def skipped_markdown(skipped: list[dict]) -> list[str]:
    """One line per variant this host could not run ("power_limit250: skipped, no GPU on this host")."""
    if not skipped:
        return []
    seeds = {}
    for run in skipped:
        seeds.setdefault((run["model"], run["variant"], run["reason"]), []).append(run["seed"])
    lines = ["## Skipped", ""]
    for (model, variant, reason), runs in sorted(seeds.items()):
        seeds_text = f"seed{'s' if len(runs) > 1 else ''} {', '.join(map(str, sorted(runs)))}"
        lines.append(f"- {variant}: skipped, {reason} ({model}, {seeds_text}).")
    return [*lines, ""]


def _break_even_cell(row) -> str:
    """The break-even verdict; where it cannot be determined, why and what would resolve it; and
    whether the comparison crosses devices."""
    text = row["verdict"]
    unknown_because = row.get("break_even_unknown_because")
    if isinstance(unknown_because, str) and unknown_because:
        text += f": {unknown_because}"
    caveats = []
    if crosses_devices(row, "inference_devices"):
        caveats.append(f"inference crosses devices: {row['inference_devices']}")
    if crosses_devices(row, "training_devices"):
        caveats.append(f"training crosses devices: {row['training_devices']}")
    return text + (f" ({'; '.join(caveats)})" if caveats else "")


def break_even_markdown(break_even: pd.DataFrame) -> list[str]:
    """The break-even table (report_decisions.break_even_table). A break-even that rests on a
    difference the data cannot tell from zero (in inference or in production energy) has no
    number: the row says so and names the config keys that would resolve it. A comparison of
    inference on different devices is marked."""
    lines = [
        "## Break-even against the baseline",
        "",
        "After how many inferences the extra energy to produce a variant is paid back by cheaper "
        "inference: N* = (E_produce(variant) - E_produce(baseline)) / "
        "(E_inference(baseline) - E_inference(variant)), per sample, from the paired differences of "
        "the verdicts. Where either difference is within noise, so is N*, and it is not given.",
        "",
    ]
    header = [
        "Model",
        "Variant",
        "Extra energy to produce (J)",
        "Inference saving (J/1k samples)",
        "Break-even",
    ]
    rows = [
        [
            row["model"],
            row["variant"],
            f"{row['extra_produce_j']:+,.1f}",
            f"{row['saving_per_inference_j'] * 1000:+.4f}",
            _break_even_cell(row),
        ]
        for _, row in break_even.iterrows()
    ]
    return [*lines, markdown_table(header, rows), ""]


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


def _kept_phrase(sampled, cleaned) -> str:
    """Whether the sample kept the cleaned data's Vendi score; no verdict where the two scores
    came from samples of different sizes, since the score grows with the sample."""
    scores = f"Vendi {sampled['vendi_score']:.1f} vs {cleaned['vendi_score']:.1f}"
    sizes = (sampled.get("vendi_sample"), cleaned.get("vendi_sample"))
    if sizes[0] != sizes[1]:
        return (
            f"the Vendi scores do not compare ({scores}, on samples of {sizes[0]:,.0f} and "
            f"{sizes[1]:,.0f} images)"
        )
    kept = sampled["vendi_score"] >= cleaned["vendi_score"]
    return (
        f"the sample {'keeps' if kept else 'does **not** keep'} the diversity of the cleaned data "
        f"({scores}, {sizes[0]:,.0f} images each)"
    )


def diversity_markdown(diversity: pd.DataFrame | None) -> list[str]:
    """The training data's diversity at each data stage, and whether sampling kept it (D1 >= D0)."""
    if diversity is None or diversity.empty:
        return []
    header = ["Data", "Variant", "Seed", "Class entropy (nats)", "Evenness", "Vendi score"]
    rows = [
        [
            row["data"],
            "" if pd.isna(row["variant"]) else row["variant"],
            "" if pd.isna(row["seed"]) else str(int(row["seed"])),
            f"{row['class_entropy_nats']:.3f}",
            f"{row['class_evenness']:.3f}",
            f"{row['vendi_score']:.1f}",
        ]
        for _, row in diversity.iterrows()
    ]
    lines = [
        "## Data diversity",
        "",
        "Diversity of the training data at each stage (data optimisation should keep it: "
        "D1 >= D0): class entropy and its evenness (Pielou), and the Vendi score (Friedman & Dieng, "
        "TMLR 2023), the effective number of distinct images, on random samples of one size for the "
        "stages compared (the smaller stage's size, at most 1,000; since the score grows with the "
        "sample, stages compare only at one size).",
        "",
        markdown_table(header, rows),
        "",
    ]
    for (variant, seed), group in diversity.dropna(subset=["variant"]).groupby(["variant", "seed"]):
        stages = {row["data"]: row for _, row in group.iterrows()}
        if {"cleaned", "sampled"} <= set(stages):
            lines.append(
                f"- {variant} (seed {int(seed)}): {_kept_phrase(stages['sampled'], stages['cleaned'])}."
            )
    return [*lines, ""] if len(lines) > 6 else lines


def summary_markdown(
    summary: pd.DataFrame,
    decisions: dict,
    break_even: pd.DataFrame,
    differences: pd.DataFrame,
    protocol: dict | None = None,
    diversity: pd.DataFrame | None = None,
) -> str:
    header, rows, footnotes = paper_table(summary)
    measured = summary["pipeline_energy_measured"].all()
    lines = [
        "# joulebench report",
        "",
        "Energy figures are **measured** by hardware counters."
        if measured
        else "Energy figures are **estimated**, wholly or in part: Green Algorithms model for each "
        "component no counter covered (see each record's `parts`, which label every term with its "
        f"source). Sources: {', '.join(energy_sources(summary))}.",
        "",
        *estimate_note(summary),
        *boundary_markdown(summary),
        *busy_host_note(summary),
        *busy_gpu_note(summary),
        *decisions_markdown(decisions, summary),
        *skipped_markdown(decisions.get("skipped", [])),
        *break_even_markdown(break_even),
        "## Results",
        "",
        markdown_with_notes(header, rows, footnotes),
        *protocol_paragraph(protocol),
        *resolution_markdown(summary, differences),
        *host_speed_markdown(summary),
        *diversity_markdown(diversity),
        "## Verdicts",
        "",
        "Each variant against the baseline, seed by seed (its seed s is made from or trained beside "
        "baseline seed s): the mean change, and ± the half-width of the 95% interval of the paired "
        "difference. Where that interval includes 0, the seeds cannot tell the two apart: add seeds.",
        "",
    ]
    for (dataset, model), group in summary.groupby(["dataset", "model"], sort=True):
        pairs = differences[(differences["dataset"] == dataset) & (differences["model"] == model)]
        if pairs.empty:
            continue
        optimal = ", ".join(group.loc[group["pareto_training"], "variant"])
        lines.append(f"Pareto-optimal (accuracy vs energy to produce): **{optimal}**.")
        lines.append("")
        for _, pair in pairs.iterrows():
            lines.append(verdict(pair))
        lines.append("")
    return "\n".join(lines) + "\n"
