"""Tables for papers (Markdown and LaTeX booktabs); the plain-language summary is report_summary's.

The paper table is built once as a grid of cell strings; Markdown and LaTeX only render it, so the
two can never disagree. Units are in the headers; footnotes say which energy is estimated.
"""

import math

import pandas as pd

from joulebench.report.stats import accuracy_bounds, energy_unit

ESTIMATED_MARK = "†"
NO_CI_MARK = "‡"


def mean_ci_cell(mean: float, ci: float | None, digits: int, scale: float = 1.0) -> str:
    """'97.22 ± 0.41' (95% CI half-width), or '97.22‡' where one seed gives no interval."""
    if ci is None or (isinstance(ci, float) and math.isnan(ci)):
        return f"{mean * scale:.{digits}f}{NO_CI_MARK}"
    return f"{mean * scale:.{digits}f} ± {ci * scale:.{digits}f}"


def accuracy_cell(row, digits: int = 2) -> str:
    """Accuracy in percent with its logit-scale interval (report_stats.accuracy_bounds), which
    stays within 0-100%: '97.75 (80.50-99.90)', or '92.00 ± 0.00' where the interval is
    symmetric at the printed precision; '97.22‡' where one seed gives no interval."""
    mean = row["test_accuracy"] * 100
    low, high = accuracy_bounds(row)
    if low is None:
        return f"{mean:.{digits}f}{NO_CI_MARK}"
    below, above = f"{mean - low * 100:.{digits}f}", f"{high * 100 - mean:.{digits}f}"
    if below == above:
        return f"{mean:.{digits}f} ± {below}"
    return f"{mean:.{digits}f} ({low * 100:.{digits}f}-{high * 100:.{digits}f})"


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
                accuracy_cell(row),
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
        "Mean over seeds ± half-width of the 95% Student-t confidence interval on the mean; accuracy: "
        "mean (low-high) of that interval taken on the logit scale, which stays within 0-100%"
        f"{one_seed}.",
        "Energy to produce: data preparation plus every rule in the model's lineage (a compressed "
        "model includes the baseline it was made from). "
        "Params: non-zero / total where they differ (pruning, quantization).",
        "Pareto: optimal in accuracy vs energy to produce (train) or vs inference energy (inf.).",
    ]
    if (summary["technique"] == "finetune").any():
        footnotes.append(
            "Fine-tuned variants start from pretrained weights: their energy to produce excludes the "
            "pretraining, which was spent elsewhere and is unknown."
        )
    sources = energy_sources(summary)
    if not summary["pipeline_energy_measured"].all() or not summary["inference_energy_measured"].all():
        footnotes.append(
            f"{ESTIMATED_MARK} Estimated, wholly or in part: Green Algorithms model (Lannelongue et al., "
            "2021) for each component no energy counter covered (CPU time and memory; a GPU NVML "
            "could not read). Compare estimates only with estimates."
        )
    footnotes.append(f"Energy sources: {', '.join(sources)}.")
    return header, rows, footnotes


def energy_sources(summary: pd.DataFrame) -> list[str]:
    """Every counter and estimate model behind the summary's energy to produce."""
    return sorted(set("+".join(summary["pipeline_energy_sources"]).split("+")))


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
