"""The report's figures, named once: the aggregate_report rule declares one PDF and one PNG per
figure (workflow/rules/common.smk), joulebench.report.figures draws each into its files, and the
HTML report (`snakemake --report`) files each PNG under its category with its caption
(workflow/report/<name>.rst) and its labels.

Kept apart from report_figures, which imports matplotlib and pandas: the Snakefile reads this
registry while it parses, and every Snakemake start would pay those imports.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One report figure: its category in the HTML report and its title there."""

    category: str
    title: str

    def labels(self) -> dict[str, str]:
        """The figure's labels in the HTML report, where a category's results form a table with a
        column per label. Only the figure: every figure shows every variant of the run (minus those
        a host skipped, known only once the run has ended), so a variant label would say nothing
        that tells two results apart."""
        return {"figure": self.title}


# In the order the HTML report lists them within a category.
FIGURES = {
    "accuracy_vs_training_energy": Figure("Pareto fronts", "Accuracy vs energy to produce"),
    "accuracy_vs_inference_energy": Figure("Pareto fronts", "Accuracy vs inference energy"),
    "accuracy_vs_size": Figure("Model cost", "Accuracy vs model size"),
    "accuracy_vs_macs": Figure("Model cost", "Accuracy vs MACs"),
    "energy_by_stage": Figure("Energy", "Energy by pipeline stage"),
    "training_curves": Figure("Energy", "Training curves"),
    "time_vs_energy": Figure("Energy", "Wall time vs energy"),
}


def figure_files(directory) -> dict[str, list[str]]:
    """Each figure's files under `directory` by figure name: [its PDF, its PNG], the order
    joulebench.report.figures.save_figure writes them in."""
    return {name: [f"{directory}/{name}.pdf", f"{directory}/{name}.png"] for name in FIGURES}
