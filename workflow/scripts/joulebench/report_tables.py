"""Tables for papers (Markdown and LaTeX booktabs) and the plain-language summary.

The paper table is built once as a grid of cell strings; Markdown and LaTeX only render it, so the
two can never disagree. Units are in the headers; footnotes say which energy is estimated.
"""

import math

import pandas as pd

from joulebench.report_decisions import BASELINE
from joulebench.report_stats import energy_unit

ESTIMATED_MARK = "†"
NO_CI_MARK = "‡"


def mean_ci_cell(mean: float, ci: float | None, digits: int, scale: float = 1.0) -> str:
    """'97.22 ± 0.41' (95% CI half-width), or '97.22‡' where one seed gives no interval."""
    if ci is None or (isinstance(ci, float) and math.isnan(ci)):
        return f"{mean * scale:.{digits}f}{NO_CI_MARK}"
    return f"{mean * scale:.{digits}f} ± {ci * scale:.{digits}f}"


def _significant(value: float, digits: int = 3) -> str:
    """A value with `digits` significant figures, without scientific notation for usual sizes."""
    if value == 0 or math.isnan(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def paper_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of the per-variant table: every cell already a string."""
    divisor, unit = energy_unit(summary["pipeline_energy_j"].max())
    several_models = summary["model"].nunique() > 1
    header = [
        "Variant",
        "n",
        "Accuracy (%)",
        f"Energy to produce ({unit})",
        "Inference (J/1k samples)",
        "Params",
        "Size (kB)",
        "MACs (M)",
        "Latency p50 (ms)",
        "Pareto",
    ]
    rows = []
    for _, row in summary.iterrows():
        produce = mean_ci_cell(row["pipeline_energy_j"], row["pipeline_energy_j_ci95"], 1, 1 / divisor)
        inference = mean_ci_cell(row["inference_joules_per_1k"], row["inference_joules_per_1k_ci95"], 3)
        fronts = [
            name
            for name, flag in (("train", row["pareto_training"]), ("inf.", row["pareto_inference"]))
            if flag
        ]
        rows.append(
            [
                f"{row['model']}/{row['variant']}" if several_models else row["variant"],
                str(row["n"]),
                mean_ci_cell(row["test_accuracy"], row["test_accuracy_ci95"], 2, 100),
                produce + ("" if row["pipeline_energy_measured"] else ESTIMATED_MARK),
                inference + ("" if row["inference_energy_measured"] else ESTIMATED_MARK),
                f"{int(row['nonzero_params']):,} / {int(row['params']):,}"
                if row["nonzero_params"] < row["params"]
                else f"{int(row['params']):,}",
                _significant(row["size_bytes"] / 1000),
                _significant(row["macs"] / 1e6),
                _significant(row["latency_p50_ms"]),
                ", ".join(fronts),
            ]
        )
    one_seed = f"; {NO_CI_MARK} one seed, no interval" if (summary["n"] < 2).any() else ""
    footnotes = [
        f"Mean over seeds ± half-width of the 95% Student-t confidence interval on the mean{one_seed}.",
        "Energy to produce: data preparation plus every rule in the model's lineage (a compressed "
        "model includes the baseline it was made from). "
        "Params: non-zero / total where they differ (pruning, quantization).",
        "Pareto: optimal in accuracy vs energy to produce (train) or vs inference energy (inf.).",
    ]
    sources = sorted(set("+".join(summary["pipeline_energy_sources"]).split("+")))
    if not summary["pipeline_energy_measured"].all() or not summary["inference_energy_measured"].all():
        footnotes.append(
            f"{ESTIMATED_MARK} Estimated, not measured: no energy counter was available; Green Algorithms "
            "model (Lannelongue et al., 2021) from CPU time and memory. "
            "Compare estimates only with estimates."
        )
    footnotes.append(f"Energy sources: {', '.join(sources)}.")
    return header, rows, footnotes


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown_with_notes(header: list[str], rows: list[list[str]], footnotes: list[str]) -> str:
    """The table, then one footnote per line (two trailing spaces: a Markdown line break)."""
    notes = [f"{note}  " for note in footnotes]
    return "\n".join([markdown_table(header, rows), "", *notes]) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    ESTIMATED_MARK: r"$^\dagger$",
    NO_CI_MARK: r"$^\ddagger$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(char, char) for char in text)


def latex_table(header: list[str], rows: list[list[str]], footnotes: list[str]) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}) with the footnotes below it."""
    lines = [
        "% Generated by joulebench; needs \\usepackage{booktabs}.",
        r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        r"\toprule",
        " & ".join(latex_escape(cell) for cell in header) + r" \\",
        r"\midrule",
    ]
    for row in rows:
        lines.append(" & ".join(latex_escape(cell) for cell in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    for note in footnotes:
        lines.append(r"\par\footnotesize " + latex_escape(note))
    return "\n".join(lines) + "\n"


def verdict(row, base) -> str:
    """One sentence per variant: does it save energy to produce, inference energy, at what accuracy?"""
    d_energy = row["pipeline_energy_j"] / base["pipeline_energy_j"] - 1
    d_accuracy = (row["test_accuracy"] - base["test_accuracy"]) * 100
    d_inference = row["inference_joules_per_1k"] / base["inference_joules_per_1k"] - 1
    produce = (
        f"saves {-d_energy:.0%} of the energy to produce"
        if d_energy < 0
        else f"does **not** save energy to produce (+{d_energy:.0%})"
    )
    inference = (
        f"saves {-d_inference:.0%} inference energy"
        if d_inference < 0
        else f"does **not** save inference energy (+{d_inference:.0%})"
    )
    return (
        f"- **{row['variant']}** ({row['model']}) {produce}, {inference}, accuracy {d_accuracy:+.2f} points."
    )


def _variant_fact(row) -> str:
    return (
        f"**{row['model']}/{row['variant']}**: {row['test_accuracy'] * 100:.2f}% accuracy, "
        f"{row['pipeline_energy_j']:,.1f} J to produce (n={row['n']})"
    )


def decisions_markdown(decisions: dict, summary: pd.DataFrame) -> list[str]:
    lines = ["## Decisions", ""]
    target = decisions.get("accuracy_target")
    if target is None:
        lines.append("- No accuracy target configured (`report.accuracy_target`).")
    elif decisions["cheapest_meeting_target"]:
        winners = "; ".join(_variant_fact(row) for row in decisions["cheapest_meeting_target"])
        lines.append(f"- Cheapest variant reaching {target * 100:.1f}% accuracy: {winners}.")
    else:
        best = summary.loc[summary["test_accuracy"].idxmax()]
        lines.append(
            f"- **No variant reaches {target * 100:.1f}% accuracy**; "
            f"the most accurate is {_variant_fact(best)}."
        )
    budget = decisions.get("energy_budget_j")
    if budget is None:
        lines.append("- No energy budget configured (`report.energy_budget_j`).")
    elif decisions["most_accurate_within_budget"]:
        winners = "; ".join(_variant_fact(row) for row in decisions["most_accurate_within_budget"])
        lines.append(f"- Most accurate variant within {budget:,.1f} J to produce: {winners}.")
    else:
        cheapest = summary.loc[summary["pipeline_energy_j"].idxmin()]
        lines.append(
            f"- **No variant can be produced within {budget:,.1f} J**; "
            f"the cheapest is {_variant_fact(cheapest)}."
        )
    lines += [
        "",
        "Decisions use means over seeds; see the confidence intervals below before relying on them.",
        "",
    ]
    return lines


def break_even_markdown(break_even: pd.DataFrame) -> list[str]:
    lines = [
        "## Break-even against the baseline",
        "",
        "After how many inferences the extra energy to produce a variant is paid back by cheaper "
        "inference: N* = (E_produce(variant) - E_produce(baseline)) / "
        "(E_inference(baseline) - E_inference(variant)), per sample.",
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
            row["verdict"],
        ]
        for _, row in break_even.iterrows()
    ]
    return [*lines, markdown_table(header, rows), ""]


def summary_markdown(summary: pd.DataFrame, decisions: dict, break_even: pd.DataFrame) -> str:
    header, rows, footnotes = paper_table(summary)
    measured = summary["pipeline_energy_measured"].all()
    lines = [
        "# joulebench report",
        "",
        "Energy figures are **measured** by hardware counters."
        if measured
        else "Energy figures are **estimated** (no energy counter on this machine): Green Algorithms "
        "model from each rule's CPU time and memory; see each record's `estimate` block.",
        "",
        *decisions_markdown(decisions, summary),
        *break_even_markdown(break_even),
        "## Results",
        "",
        markdown_with_notes(header, rows, footnotes),
        "## Verdicts",
        "",
    ]
    for _, group in summary.groupby(["dataset", "model"], sort=True):
        base = group[group["variant"] == BASELINE]
        if base.empty:
            continue
        optimal = ", ".join(group.loc[group["pareto_training"], "variant"])
        lines.append(f"Pareto-optimal (accuracy vs energy to produce): **{optimal}**.")
        lines.append("")
        for _, row in group[group["variant"] != BASELINE].iterrows():
            lines.append(verdict(row, base.iloc[0]))
        lines.append("")
    return "\n".join(lines) + "\n"
