"""Two finished runs side by side: does a disagreement in energy to produce come from the host?

Reads each run's results/report/summary.csv (RUN is the directory the run wrote results/ into:
the checkout, or Snakemake's --directory) and prints, per variant, each run's energy to produce
(mean ± half-width of its 95% Student-t interval over seeds), whether each run's mean lies inside
the other's interval, and the two runs' median host-speed indices (joulebench.energy.host_speed) with
their ratio. A run's interval is within-run: its seeds share the host's state. Where the means
disagree and the ratio is far from 1, the host ran at another speed: CPU-time estimates moved with it.

    .venv/bin/joulebench-compare RUN_A RUN_B
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

SUMMARY = Path("results") / "report" / "summary.csv"
KEYS = ["dataset", "model", "variant"]


def read_summary(run: Path) -> pd.DataFrame:
    path = run / SUMMARY
    if not path.exists():
        sys.exit(f"{path} does not exist: {run} is not a finished run (its report is missing)")
    return pd.read_csv(path)


def host_speed(summary: pd.DataFrame) -> float | None:
    """The run's median host-speed index (None where its records predate the index)."""
    values = summary.get("run_host_speed_median", pd.Series(dtype=float)).dropna()
    return float(values.iloc[0]) if not values.empty else None


def interval(row: pd.Series | None) -> tuple[float, float | None] | None:
    """(mean, half-width or None for one seed) of the energy to produce, None if the run lacks it."""
    if row is None:
        return None
    half_width = row.get("pipeline_energy_j_ci95")
    return float(row["pipeline_energy_j"]), None if pd.isna(half_width) else float(half_width)


def cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "—"
    mean, half_width = value
    return f"{mean:,.1f}" + (" (one seed)" if half_width is None else f" ± {half_width:,.1f}")


def inside(mean_of: tuple | None, interval_of: tuple | None) -> str:
    """'yes' where the first run's mean lies inside the second's interval; '—' where either is missing."""
    if mean_of is None or interval_of is None or interval_of[1] is None:
        return "—"
    return "yes" if abs(mean_of[0] - interval_of[0]) <= interval_of[1] else "no"


def compare(run_a: Path, run_b: Path) -> list[str]:
    """The lines printed: both runs' host speed and their ratio, then one row per variant."""
    summaries = [read_summary(run_a), read_summary(run_b)]
    speeds = [host_speed(summary) for summary in summaries]
    lines = []
    for label, run, speed in (("A", run_a, speeds[0]), ("B", run_b, speeds[1])):
        named = "no host-speed index in its records" if speed is None else f"median {speed:,.0f} units/s"
        lines.append(f"run {label}: {run} (host speed {named})")
    if None in speeds:
        lines.append("host speed B/A: — (a run without the index cannot be compared on it)")
    else:
        ratio = speeds[1] / speeds[0]
        faster = "faster" if ratio > 1 else "slower"
        change = f"{abs(1 - ratio):.1%} {faster}" if round(ratio, 3) != 1 else "at the same speed"
        lines.append(f"host speed B/A: {ratio:.3f} (run B's host ran {change})")
    rows = [summary.set_index(KEYS) for summary in summaries]
    names = list(dict.fromkeys([*rows[0].index, *rows[1].index]))
    produce = [f"{label}: energy to produce (J)" for label in "AB"]
    lines += ["", f"{'variant':<32} {produce[0]:>26} {produce[1]:>26} {'A in B':>7} {'B in A':>7}"]
    for key in names:
        a, b = (interval(frame.loc[key]) if key in frame.index else None for frame in rows)
        name = "/".join(str(part) for part in key[1:])
        lines.append(f"{name:<32} {cell(a):>26} {cell(b):>26} {inside(a, b):>7} {inside(b, a):>7}")
    lines += [
        "",
        "Intervals are 95% Student-t over each run's seeds, which share one host state: they do not "
        "cover drift between runs. Where the means disagree and host speed B/A is far from 1, the "
        "host ran at another speed (CPU-time estimates scale with it).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="a finished run's directory (holds results/report/)")
    parser.add_argument("run_b", type=Path, help="another finished run's directory")
    args = parser.parse_args()
    print("\n".join(compare(args.run_a, args.run_b)))


if __name__ == "__main__":
    main()
