"""joulebench-compare (joulebench.report.compare_runs) on two hand-made finished runs, and run as
the README prints it."""

import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from readme import readme_commands

# The command the package installs (pyproject's [project.scripts]).
COMMAND = str(Path(sys.prefix) / "bin" / "joulebench-compare")

KEYS = {"dataset": "digits", "model": "small_cnn"}


def make_run(directory, rows: dict, host_speed: float | None):
    """A finished run's report summary: {variant: (mean J, 95% half-width or None)}."""
    report = directory / "results" / "report"
    report.mkdir(parents=True)
    frame = pd.DataFrame(
        [
            {**KEYS, "variant": variant, "pipeline_energy_j": mean, "pipeline_energy_j_ci95": half_width}
            for variant, (mean, half_width) in rows.items()
        ]
    )
    if host_speed is not None:
        frame["run_host_speed_median"] = host_speed
    frame.to_csv(report / "summary.csv", index=False)


def two_runs(root):
    # Two runs of one commit: the second on a host 15% slower.
    make_run(root / "runs" / "first", {"baseline": (34.8, 7.8), "prune80": (50.0, None)}, 20000.0)
    make_run(root / "runs" / "second", {"baseline": (39.8, 1.8)}, 17000.0)


def run_compare(cwd, *args):
    result = subprocess.run(
        [COMMAND, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_compare_runs_says_which_mean_lies_in_the_others_interval_and_the_host_speed_ratio(tmp_path):
    two_runs(tmp_path)
    lines = run_compare(tmp_path, "runs/first", "runs/second").splitlines()
    assert "run A: runs/first (host speed median 20,000 units/s)" in lines
    assert "host speed B/A: 0.850 (run B's host ran 15.0% slower)" in lines
    # A's mean is 5 J from B's: outside B's ± 1.8, inside A's own ± 7.8.
    baseline = next(line for line in lines if line.startswith("small_cnn/baseline"))
    assert baseline.split()[1:] == ["34.8", "±", "7.8", "39.8", "±", "1.8", "no", "yes"]
    prune = next(line for line in lines if line.startswith("small_cnn/prune80"))
    assert prune.split()[1:] == ["50.0", "(one", "seed)", "—", "—", "—"]


def test_compare_runs_without_the_index_or_without_a_report(tmp_path):
    make_run(tmp_path / "old", {"baseline": (30.0, 2.0)}, None)
    make_run(tmp_path / "new", {"baseline": (31.0, 2.0)}, 20000.0)
    out = run_compare(tmp_path, "old", "new")
    assert "run A: old (host speed no host-speed index in its records)" in out
    assert "host speed B/A: — (a run without the index cannot be compared on it)" in out
    result = subprocess.run(
        [COMMAND, "old", "missing"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "missing/results/report/summary.csv does not exist" in result.stderr


def test_compare_runs_runs_as_the_readme_prints_it(tmp_path):
    (command,) = [c for c in readme_commands("Reading an energy record") if "joulebench-compare" in c]
    assert shlex.split(command)[0] == ".venv/bin/joulebench-compare"
    two_runs(tmp_path)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "host speed B/A: 0.850" in result.stdout
