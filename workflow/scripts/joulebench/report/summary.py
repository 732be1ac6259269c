"""The plain-language summary (summary.md), what the numbers say: decisions, verdicts, break-even,
devices, skipped variants, data diversity and the results table (rendered by
joulebench.report.tables, so summary.md and table.md never disagree). How far to trust them is
joulebench.report.trust; summary_markdown puts the two together.
"""

import pandas as pd

from joulebench.report.stats import device_label
from joulebench.report.tables import energy_sources, markdown_table, markdown_with_notes, paper_table
from joulebench.report.trust import (
    boundary_markdown,
    busy_gpu_note,
    busy_host_note,
    estimate_note,
    host_speed_markdown,
    protocol_paragraph,
    resolution_markdown,
)
from joulebench.report.verdicts import crosses_devices, verdict


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
