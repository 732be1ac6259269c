"""Aggregate energy records and evaluations into a tidy table, a Pareto plot and a summary."""

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from joulebench import io  # noqa: E402

log = logging.getLogger(__name__)

BASELINE = "baseline"


def parent(variant: str, variants: dict) -> str | None:
    """The variant this one is made from; None for models trained from scratch."""
    if variant == BASELINE or variants[variant]["technique"] == "precision":
        return None
    return variants[variant].get("from", BASELINE)


def lineage(variant: str, variants: dict) -> list[str]:
    """The variant and every variant it was made from, back to one trained from scratch."""
    chain = [variant]
    while (step := parent(chain[-1], variants)) is not None:
        chain.append(step)
    return chain


def pipeline_joules(variant: str, seed: int, own: dict, variants: dict, data_joules: float) -> float:
    """Energy to produce a variant from raw data: data preparation plus every rule in its lineage.

    A pruned model cannot exist without the baseline it was pruned from, so it carries that cost.
    Precision variants and the baseline are trained from scratch and start at the data.
    """
    total = data_joules
    for step in lineage(variant, variants):
        total += own[(step, seed)]["joules"]
    return total


def build_table(entries: list[dict], variants: dict, data_energy: dict) -> pd.DataFrame:
    """One row per (model, variant, seed): metrics, energy and where each energy figure came from."""
    own = {(e["variant"], e["seed"]): io.read_json(e["energy"]) for e in entries}
    rows = []
    for entry in entries:
        variant, seed = entry["variant"], entry["seed"]
        metrics = io.read_json(entry["metrics"])
        record = own[(variant, seed)]
        chain = lineage(variant, variants)
        chain_records = [own[(step, seed)] for step in chain] + [data_energy]
        rows.append(
            {
                "dataset": entry["dataset"],
                "model": entry["model"],
                "variant": variant,
                "technique": variants.get(variant, {}).get("technique", "train"),
                "parent": parent(variant, variants),
                "seed": seed,
                **metrics,
                "own_energy_j": record["joules"],
                "own_energy_source": record["source"],
                "own_wall_time_s": record["wall_time_s"],
                "pipeline_energy_j": pipeline_joules(variant, seed, own, variants, data_energy["joules"]),
                "pipeline_energy_measured": all(r["measured"] for r in chain_records),
                "pipeline_energy_sources": "+".join(sorted({r["source"] for r in chain_records})),
            }
        )
    return pd.DataFrame(rows).sort_values(["model", "variant", "seed"]).reset_index(drop=True)


def pareto_mask(accuracy, energy) -> list[bool]:
    """True where no other point has accuracy >= and energy <= with at least one strictly better."""
    points = list(zip(accuracy, energy, strict=True))
    return [not any(a2 >= a and e2 <= e and (a2 > a or e2 < e) for a2, e2 in points) for a, e in points]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation per (model, variant) over seeds, with the Pareto flag."""
    grouped = table.groupby(["model", "variant"], sort=True)
    summary = grouped.agg(
        n=("seed", "count"),
        accuracy=("test_accuracy", "mean"),
        accuracy_std=("test_accuracy", "std"),
        pipeline_energy_j=("pipeline_energy_j", "mean"),
        pipeline_energy_std=("pipeline_energy_j", "std"),
        inference_j_per_1k=("inference_joules_per_1k", "mean"),
        latency_p50_ms=("latency_p50_ms", "mean"),
        params=("params", "mean"),
        nonzero_params=("nonzero_params", "mean"),
        size_bytes=("size_bytes", "mean"),
        measured=("pipeline_energy_measured", "all"),
        precision=("precision", "first"),
    ).reset_index()
    summary["pareto_optimal"] = pareto_mask(summary["accuracy"], summary["pipeline_energy_j"])
    return summary


def plot_pareto(summary: pd.DataFrame, out_base: Path) -> None:
    """Accuracy vs pipeline energy, one marker per variant; hollow markers are estimates."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    colors = plt.get_cmap("tab10").colors  # a colour-blind-safe palette
    for i, row in summary.iterrows():
        color = colors[i % len(colors)]
        ax.errorbar(
            row["pipeline_energy_j"], row["accuracy"] * 100,
            xerr=row["pipeline_energy_std"] if row["n"] > 1 else None,
            yerr=row["accuracy_std"] * 100 if row["n"] > 1 else None,
            fmt="o", color=color, mfc=color if row["measured"] else "white", capsize=2,
            label=f"{row['variant']} (n={row['n']})",
        )  # fmt: skip
    front = summary[summary["pareto_optimal"]].sort_values("pipeline_energy_j")
    ax.step(front["pipeline_energy_j"], front["accuracy"] * 100, where="post", color="0.4", ls="--", lw=1)
    estimated = not summary["measured"].all()
    ax.set_xlabel("Energy to produce the model (J)" + (", hollow = estimated" if estimated else ""))
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title("Accuracy vs energy; dashed: Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    for suffix in (".png", ".pdf"):
        path = out_base.with_suffix(suffix)
        io.write_atomic(
            path, lambda tmp, s=suffix: fig.savefig(tmp, format=s[1:], dpi=200, metadata=_NO_DATES[s])
        )
    plt.close(fig)


# No creation dates in figure files, so the same table always gives byte-identical figures.
_NO_DATES = {".png": {"Software": None}, ".pdf": {"CreationDate": None, "Producer": None}}


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def summary_markdown(summary: pd.DataFrame) -> str:
    lines = ["# joulebench summary", ""]
    measured = summary["measured"].all()
    lines.append(
        "Energy figures are **measured** by hardware counters."
        if measured
        else "Energy figures are **estimated** (no energy counter on this machine): Green Algorithms "
        "model from each rule's CPU time and memory; see each record's `estimate` block."
    )
    lines.append("")
    for model, group in summary.groupby("model"):
        base = group[group["variant"] == BASELINE].iloc[0]
        table = pd.DataFrame(
            {
                "variant": group["variant"],
                "n": group["n"],
                "precision": group["precision"],
                "accuracy %": (group["accuracy"] * 100).round(2),
                "energy J": group["pipeline_energy_j"].round(1),
                "vs baseline": [
                    f"{(e / base['pipeline_energy_j'] - 1) * 100:+.1f}%" for e in group["pipeline_energy_j"]
                ],
                "inference J/1k": group["inference_j_per_1k"].round(3),
                "p50 latency ms": group["latency_p50_ms"].round(3),
                "params": group["params"].astype(int),
                "Pareto": ["yes" if p else "" for p in group["pareto_optimal"]],
            }
        )
        lines += [f"## {model}", "", _markdown_table(table), ""]
        optimal = ", ".join(group.loc[group["pareto_optimal"], "variant"])
        lines.append(f"Pareto-optimal (accuracy vs energy to produce): **{optimal}**.")
        lines.append("")
        for _, row in group[group["variant"] != BASELINE].iterrows():
            lines.append(_verdict(row, base))
        lines.append("")
    lines.append(
        "Energy to produce a model counts data preparation and every rule in its lineage: a "
        "compressed model includes the baseline it was made from, so it can only repay that cost "
        "through cheaper inference."
    )
    return "\n".join(lines) + "\n"


def _verdict(row, base) -> str:
    d_energy = row["pipeline_energy_j"] / base["pipeline_energy_j"] - 1
    d_acc = (row["accuracy"] - base["accuracy"]) * 100
    d_inf = row["inference_j_per_1k"] / base["inference_j_per_1k"] - 1
    train_part = (
        f"saves {-d_energy:.0%} of the energy to produce"
        if d_energy < 0
        else f"does **not** save energy to produce (+{d_energy:.0%})"
    )
    infer_part = (
        f"saves {-d_inf:.0%} inference energy"
        if d_inf < 0
        else f"does **not** save inference energy (+{d_inf:.0%})"
    )
    return f"- **{row['variant']}** {train_part}, {infer_part}, accuracy {d_acc:+.2f} points vs baseline."


def write_report(table: pd.DataFrame, out_dir) -> pd.DataFrame:
    out_dir = Path(out_dir)
    summary = summarize(table)
    io.write_csv(out_dir / "results.csv", table)
    io.write_csv(out_dir / "summary.csv", summary)
    plot_pareto(summary, out_dir / "pareto")
    io.write_text(out_dir / "summary.md", summary_markdown(summary))
    return summary
