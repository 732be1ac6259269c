"""Per-job start-up overhead of a finished run: the seconds a job spends outside its measured window.

A job's wall time (Snakemake's benchmark, `benchmarks/<rule>/...tsv`, column `s`) minus the
seconds of its rule's measured window (`wall_time_s` of the energy record, `energy.json`, that the
rule wrote) is its start-up: interpreter, imports, loading inputs before the meter starts, writing
outputs after it stops. Prints, per rule and in total, jobs, job seconds, measured seconds, start-up
seconds and start-up / measured. Run it in the directory of a finished run:

    python bench/bench_job_overhead.py [--directory .]
"""

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

# joulebench.energy.meter.RECORD_SCHEMA, written here so this script needs no torch or Zeus.
ENERGY_RECORD_SCHEMA = "joulebench.energy/1"


def job_seconds(benchmarks: Path) -> dict[str, list[float]]:
    """Wall seconds of every benchmarked job, by rule (the first folder under `benchmarks`); a
    job benchmarked with repeats counts its mean."""
    jobs = defaultdict(list)
    for path in sorted(benchmarks.rglob("*.tsv")):
        rule = path.relative_to(benchmarks).parts[0].removesuffix(".tsv")
        with path.open(newline="") as handle:
            seconds = [float(row["s"]) for row in csv.DictReader(handle, delimiter="\t")]
        if seconds:
            jobs[rule].append(sum(seconds) / len(seconds))
    return jobs


def measured_windows(results: Path) -> dict[str, list[dict]]:
    """Every energy record of the run (`energy.json`, and the idle baseline's
    `idle_power.json`), by the rule that wrote it."""
    records = defaultdict(list)
    for path in sorted(results.rglob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and record.get("schema") == ENERGY_RECORD_SCHEMA:
            records[record["rule"]].append(record)
    return records


def overhead_table(directory: Path) -> list[tuple]:
    """Rows (rule, jobs, job s, measured s, start-up s, start-up / measured), then the total, of
    the run in `directory` (its `benchmarks/` and `results/`)."""
    jobs = job_seconds(directory / "benchmarks")
    records = measured_windows(directory / "results")
    rows = []
    for rule in sorted(jobs):
        job_s = sum(jobs[rule])
        measured_s = sum(record["wall_time_s"] for record in records.get(rule, []))
        rows.append((rule, len(jobs[rule]), job_s, measured_s))
    total = ("total", *(sum(row[i] for row in rows) for i in (1, 2, 3)))
    return [
        (*row, row[2] - row[3], (row[2] - row[3]) / row[3] if row[3] else float("nan"))
        for row in [*rows, total]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--directory", type=Path, default=Path("."), help="the run's working directory")
    args = parser.parse_args()
    if not (args.directory / "benchmarks").is_dir():
        raise SystemExit(
            f"no Snakemake benchmarks under {args.directory / 'benchmarks'}: run the workflow first"
        )
    rows = overhead_table(args.directory)
    header = ("rule", "jobs", "job_s", "measured_s", "startup_s", "startup/measured")
    print(f"{header[0]:<20} {header[1]:>5} {header[2]:>9} {header[3]:>11} {header[4]:>10} {header[5]:>17}")
    for rule, count, job_s, measured_s, startup_s, ratio in rows:
        print(f"{rule:<20} {count:>5} {job_s:>9.1f} {measured_s:>11.1f} {startup_s:>10.1f} {ratio:>17.2f}")
    records = [record for group in measured_windows(args.directory / "results").values() for record in group]
    if records:
        span = max(r["end_unix"] for r in records) - min(r["start_unix"] for r in records)
        print(f"run: first window start to last window end {span:.1f} s")


if __name__ == "__main__":
    main()
