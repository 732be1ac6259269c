"""Paper-ready figures: one style, colour-blind-safe, vector PDF + PNG, byte-identical on a rerun.

Every figure is sized for one column of a two-column paper (3.5 in wide) with 7-8 pt text.
Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies); filled markers
are measured energy, hollow markers estimated energy; marker shape tells models apart and, where
the rows ran on more than one device (a CPU-pinned variant beside a GPU baseline), devices too, with
a legend entry per device ("CPU (its model)", the GPU's name). Where every row ran on one device a
legend line says which. Figures about making a model mark the device that made it
(`training_device`); figures about using it (inference energy, size, MACs) where it inferred.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from cycler import cycler  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from joulebench import store  # noqa: E402
from joulebench.report.figure_registry import FIGURES  # noqa: E402
from joulebench.report.stats import device_label, energy_unit, pareto_mask  # noqa: E402
from joulebench.variants import BASELINE  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design"; black first for the baseline, yellow last
# because it is faint on white.
OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442"]
STAGE_COLOURS = {"data": "#999999", "train": "#0072B2", "compress": "#E69F00", "evaluate": "#009E73"}
STAGES = list(STAGE_COLOURS)
MODEL_MARKERS = ["o", "s", "^", "D", "v", "P"]
COLUMN_WIDTH_IN = 3.5
FRONT_COLOUR = "0.25"
# Energy axes turn logarithmic when the costliest variant needs this many times the cheapest.
SPREAD_FOR_LOG_ENERGY = 3

STYLE = {
    "figure.figsize": (COLUMN_WIDTH_IN, 2.5),
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs on every machine
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6,
    "legend.framealpha": 0.85,
    "lines.linewidth": 1.0,
    "lines.markersize": 4.5,
    "axes.linewidth": 0.6,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=OKABE_ITO),
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text, accepted by publishers
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    # Legends go below the axes (fig.legend "outside"), so they never hide a point.
    "figure.constrained_layout.use": True,
}

# No creation dates or software versions in figure files: the same table gives the same bytes.
_NO_DATES = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}


def save_figure(fig, files) -> list[Path]:
    """Write the figure to its declared `files` (its PDF, then its PNG) atomically, without
    timestamps; close the figure. The order is part of the bytes: each save lays the figure out."""
    pdf, png = files
    paths = []
    for path, fmt in ((pdf, "pdf"), (png, "png")):
        store.write_atomic(path, lambda tmp, f=fmt: fig.savefig(tmp, format=f, metadata=_NO_DATES[f]))
        paths.append(Path(path))
    plt.close(fig)
    return paths


def _devices(summary, kind: str = "training") -> dict[tuple, str]:
    """(model, variant) -> the label of the device its row ran on (`kind`: training or inference)."""
    devices = summary.get(f"{kind}_device", pd.Series("cpu", index=summary.index))
    names = summary.get(f"{kind}_device_name", pd.Series("", index=summary.index)).fillna("")
    return {
        (row["model"], row["variant"]): device_label(device, name)
        for (_, row), device, name in zip(summary.iterrows(), devices, names, strict=True)
    }


def _looks(summary, kind: str = "training"):
    """Colour per variant and marker per (model, variant), fixed by sorted name so figures agree.

    Marker shape tells models apart, and devices (`kind`: where the rows trained or inferred) where
    there are several; past eight variants the colours repeat, so the marker shifts too and no two
    variants of one model look the same.
    """
    variants = sorted(summary["variant"].unique(), key=lambda v: (v != BASELINE, v))
    models = sorted(summary["model"].unique())
    devices = _devices(summary, kind)
    labels = sorted(set(devices.values()))
    colours = {v: OKABE_ITO[i % len(OKABE_ITO)] for i, v in enumerate(variants)}
    markers = {}
    for m_index, model in enumerate(models):
        for v_index, variant in enumerate(variants):
            device = labels.index(devices.get((model, variant), labels[0]))
            shift = m_index * len(labels) + device + v_index // len(OKABE_ITO)
            markers[(model, variant)] = MODEL_MARKERS[shift % len(MODEL_MARKERS)]
    return colours, markers, len(models) > 1


def _device_tags(labels) -> dict[str, str]:
    """A short tag per device label for bar labels: CPU, GPU (GPU1, GPU2 where there are several)."""
    tags, gpus = {}, sorted(label for label in labels if not label.startswith("CPU"))
    for label in sorted(labels):
        if label.startswith("CPU"):
            tags[label] = "CPU"
        else:
            tags[label] = "GPU" if len(gpus) == 1 else f"GPU{gpus.index(label) + 1}"
    return tags


def _device_handles(summary, markers, kind: str = "training") -> list:
    """Legend entries saying where the rows ran: one line where every row ran on one device, else
    a marker per device (per model and device where there are several models)."""
    devices = _devices(summary, kind)
    verb = "trained" if kind == "training" else "inferred"
    if len(set(devices.values())) == 1:
        return [Line2D([], [], ls="", label=f"all {verb} on {next(iter(devices.values()))}")]
    several = summary["model"].nunique() > 1
    handles = {}
    for (model, variant), device in sorted(devices.items()):
        label = f"{model} on {device}" if several else f"{verb} on {device}"
        handles.setdefault(
            label, Line2D([], [], ls="", marker=markers[(model, variant)], color="0.3", label=label)
        )
    return list(handles.values())


def _label(row, several_models: bool, with_n: bool = True) -> str:
    name = f"{row['model']}/{row['variant']}" if several_models else row["variant"]
    return f"{name} (n={row['n']})" if with_n else name


def _legend_below(fig, handles, ncols: int = 3) -> None:
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False)


def _error_bar(half_width, scale: float) -> float | None:
    """A CI half-width on the plot's scale; None (no bar) where n = 1 left no interval."""
    return None if pd.isna(half_width) else half_width * scale


def _accuracy_bar(row) -> list[list[float]] | None:
    """Asymmetric accuracy bar (percent) from the logit-scale interval, which stays in [0, 100]."""
    if row.get("test_accuracy_low") is None or pd.isna(row.get("test_accuracy_low")):
        return None
    mean = row["test_accuracy"]
    low, high = min(row["test_accuracy_low"], mean), max(row["test_accuracy_high"], mean)
    return [[(mean - low) * 100], [(high - mean) * 100]]


def _provenance_handles(measured_flags) -> list:
    """Legend entries explaining filled vs hollow markers, only for kinds present."""
    handles = []
    if any(measured_flags):
        handles.append(Line2D([], [], ls="", marker="o", color="0.3", label="measured"))
    if not all(measured_flags):
        handles.append(Line2D([], [], ls="", marker="o", color="0.3", mfc="white", label="estimated"))
    return handles


def plot_accuracy_vs(
    summary, x: str, x_ci: str | None, measured, xlabel: str, files, log_x=False, kind="training"
):
    """Accuracy (mean, 95% CI) against one cost, with the Pareto front on the means as a step line.

    `measured` names the column saying whether x is a measured energy (hollow markers where not);
    None for costs that are not energy (size, MACs). `kind`: whose device the markers tell, where
    the model was made (training) or where it inferred (inference). `files`: the figure's declared
    PDF and PNG (save_figure), as for every plot_ function.
    """
    colours, markers, several = _looks(summary, kind)
    divisor, unit = energy_unit(summary[x].max()) if "{unit}" in xlabel else (1.0, "")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        for _, row in summary.iterrows():
            colour = colours[row["variant"]]
            x_err = _error_bar(row[x_ci], 1 / divisor) if x_ci else None
            y_err = _accuracy_bar(row)
            filled = measured is None or row[measured]
            ax.errorbar(
                row[x] / divisor, row["test_accuracy"] * 100, xerr=x_err, yerr=y_err,
                fmt=markers[(row["model"], row["variant"])], color=colour, mfc=colour if filled else "white",
                capsize=1.5, elinewidth=0.5, label=_label(row, several), zorder=3,
            )  # fmt: skip
        front = summary[pareto_mask(summary["test_accuracy"], summary[x])].sort_values(x)
        # Drawn over the error bars (under the markers), dark enough to read in print.
        ax.step(
            front[x] / divisor, front["test_accuracy"] * 100,
            where="post", color=FRONT_COLOUR, ls="--", lw=1.1, zorder=2.5,
        )  # fmt: skip
        if log_x:
            ax.set_xscale("log")
            # Plain numbers, not powers of ten; between decades only 2 and 5 are labelled (1-2-5),
            # so neighbouring labels near a decade (0.8, 0.9, 1) never run into each other.
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(_one_two_five))
        else:
            # Costs are positive; the t-interval of two seeds can reach below 0: cut it at the axis.
            ax.set_xlim(left=max(ax.get_xlim()[0], 0.0))
        ax.set_xlabel(xlabel.format(unit=unit))
        handles, _ = ax.get_legend_handles_labels()
        front_handle = Line2D([], [], color=FRONT_COLOUR, ls="--", lw=1.1, label="Pareto front")
        provenance = _provenance_handles(summary[measured]) if measured else []
        ax.set_ylabel("Test accuracy (%)")
        _legend_below(fig, [*handles, front_handle, *provenance, *_device_handles(summary, markers, kind)])
        return save_figure(fig, files)


def plot_energy_by_stage(summary, files):
    """Horizontal stacked bars: mean energy of each pipeline stage per variant."""
    _, markers, several = _looks(summary)
    devices = _devices(summary)
    mixed = len(set(devices.values())) > 1
    largest = sum(summary[f"energy_{stage}_j"].max() for stage in STAGES)
    divisor, unit = energy_unit(largest)
    height = max(1.6, 0.3 * len(summary) + 0.8)
    with plt.rc_context({**STYLE, "figure.figsize": (COLUMN_WIDTH_IN, height), "axes.grid.axis": "x"}):
        fig, ax = plt.subplots()
        # Where rows trained on different devices each bar is tagged with its device (CPU, GPU),
        # and the legend names each tag's device.
        tags = _device_tags(set(devices.values()))
        labels = [
            f"{_label(row, several)} [{tags[devices[(row['model'], row['variant'])]]}]"
            if mixed
            else _label(row, several)
            for _, row in summary.iterrows()
        ]
        positions = range(len(summary))
        left = [0.0] * len(summary)
        for stage in STAGES:
            values = [v / divisor for v in summary[f"energy_{stage}_j"].fillna(0.0)]
            ax.barh(positions, values, left=left, color=STAGE_COLOURS[stage], label=stage, height=0.6)
            left = [a + b for a, b in zip(left, values, strict=True)]
        for position, measured in zip(positions, summary["pipeline_energy_measured"], strict=True):
            if not measured:
                ax.text(left[position], position, " est.", va="center", fontsize=6)
        ax.set_yticks(list(positions), labels)
        ax.invert_yaxis()
        ax.set_xlabel(f"Energy, mean over seeds ({unit})")
        named = [
            Line2D([], [], ls="", label=f"[{tag}] trained on {label}") for label, tag in sorted(tags.items())
        ]
        # The device key shares the stage legend, in two columns (device names are long).
        key = named if mixed else _device_handles(summary, markers)
        _legend_below(fig, [*ax.get_legend_handles_labels()[0], *key], ncols=2)
        return save_figure(fig, files)


def plot_training_curves(histories, summary, files):
    """Validation accuracy vs cumulative energy from raw data, one line per (variant, seed).

    A model made from another starts where its lineage ended, so curves share one energy axis.
    """
    colours, markers, several = _looks(summary)
    divisor, unit = energy_unit(histories["energy_from_data_j"].max() if len(histories) else 1.0)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        labelled = set()
        for (model, variant, _seed), curve in histories.groupby(["model", "variant", "seed"], sort=True):
            label = f"{model}/{variant}" if several else variant
            ax.plot(
                curve["energy_from_data_j"] / divisor, curve["val_accuracy"] * 100,
                color=colours[variant], marker=markers[(model, variant)], markersize=2.5,
                mfc=colours[variant] if curve["measured"].all() else "white",
                label=None if label in labelled else label,
            )  # fmt: skip
            labelled.add(label)
        ax.set_xlabel(f"Cumulative energy from raw data ({unit})")
        ax.set_ylabel("Validation accuracy (%)")
        ax.set_ylim(top=min(ax.get_ylim()[1], 100.5))
        _legend_below(fig, ax.get_legend_handles_labels()[0] + _device_handles(summary, markers))
        return save_figure(fig, files)


def plot_time_vs_energy(summary, files):
    """Wall time vs energy to produce (means, 95% CIs), one panel per model on shared axes, so
    every variant of every model is read on the same scales."""
    colours, markers, several = _looks(summary)
    models = sorted(summary["model"].unique())
    divisor, unit = energy_unit(summary["pipeline_energy_j"].max())
    height = 2.5 if len(models) == 1 else 1.3 + 1.2 * len(models)
    with plt.rc_context({**STYLE, "figure.figsize": (COLUMN_WIDTH_IN, height)}):
        fig, axes = plt.subplots(len(models), 1, sharex=True, sharey=True, squeeze=False)
        for ax, model in zip(axes[:, 0], models, strict=True):
            for _, row in summary[summary["model"] == model].iterrows():
                colour = colours[row["variant"]]
                ax.errorbar(
                    row["pipeline_wall_time_s"], row["pipeline_energy_j"] / divisor,
                    xerr=_error_bar(row["pipeline_wall_time_s_ci95"], 1.0),
                    yerr=_error_bar(row["pipeline_energy_j_ci95"], 1 / divisor),
                    fmt=markers[(model, row["variant"])], color=colour,
                    mfc=colour if row["pipeline_energy_measured"] else "white",
                    capsize=1.5, elinewidth=0.6, label=_label(row, several_models=False),
                )  # fmt: skip
            if several:
                ax.set_title(model)
            ax.set_ylabel(f"Energy to produce ({unit})")
            ax.set_xlim(left=max(ax.get_xlim()[0], 0.0))
            ax.set_ylim(bottom=max(ax.get_ylim()[0], 0.0))
        axes[-1, 0].set_xlabel("Wall time to produce (s)")
        # The panel titles name the model: one legend entry per variant (and n) is enough.
        handles = {}
        for ax in axes[:, 0]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        handles = list(handles.values())
        provenance = _provenance_handles(summary["pipeline_energy_measured"])
        _legend_below(fig, [*handles, *provenance, *_device_handles(summary, markers)])
        return save_figure(fig, files)


def write_figures(summary, histories, files: dict) -> list[Path]:
    """Every figure of the report into its declared files; `files`: figure name -> its PDF and PNG
    (the aggregate_report rule's outputs of that name, one per figure of FIGURES, the registry in
    joulebench.report.figure_registry).
    """
    missing = sorted(set(FIGURES) - set(files))
    if missing:
        raise KeyError(f"no declared files for the report figure(s) {', '.join(missing)}")
    summary = summary.assign(size_kb=summary["size_bytes"] / 1000, mmacs=summary["macs"] / 1e6)
    paths = []
    paths += plot_accuracy_vs(
        summary, "pipeline_energy_j", "pipeline_energy_j_ci95", "pipeline_energy_measured",
        "Energy to produce the model ({unit})", files["accuracy_vs_training_energy"],
        log_x=_spans(summary["pipeline_energy_j"], SPREAD_FOR_LOG_ENERGY),
    )  # fmt: skip
    paths += plot_accuracy_vs(
        summary, "inference_joules_per_1k", "inference_joules_per_1k_ci95", "inference_energy_measured",
        "Inference energy per 1,000 samples ({unit})", files["accuracy_vs_inference_energy"],
        log_x=_spans(summary["inference_joules_per_1k"], SPREAD_FOR_LOG_ENERGY), kind="inference",
    )  # fmt: skip
    paths += plot_accuracy_vs(
        summary, "size_kb", None, None, "Model size on disk (kB)",
        files["accuracy_vs_size"], log_x=_spans(summary["size_kb"], 10), kind="inference",
    )  # fmt: skip
    paths += plot_accuracy_vs(
        summary, "mmacs", None, None, "MACs per sample (millions)",
        files["accuracy_vs_macs"], log_x=_spans(summary["mmacs"], 10), kind="inference",
    )  # fmt: skip
    paths += plot_energy_by_stage(summary, files["energy_by_stage"])
    paths += plot_training_curves(histories, summary, files["training_curves"])
    paths += plot_time_vs_energy(summary, files["time_vs_energy"])
    return paths


def _one_two_five(value: float, _position=None) -> str:
    """A minor log tick's label: the value where its leading digit is 2 or 5, else none."""
    leading = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(leading) in (2, 5) and math.isclose(leading, round(leading)) else ""


def _spans(values, ratio: float) -> bool:
    """Log axis when the largest value is more than `ratio` times the smallest: on a linear axis
    the cheap variants would sit in one indistinguishable cluster beside a costly one."""
    return values.min() > 0 and values.max() / values.min() > ratio
