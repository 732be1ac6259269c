"""The report rule in a real workflow run: every output, `snakemake --report`, identical reruns."""

import hashlib
import json
import shutil

import pandas as pd
import pytest

from conftest import REPORT_FIGURES, readme_checkout, run_as_printed, run_snakemake
from joulebench.report.figure_registry import FIGURES as REGISTRY
from readme import readme_inline_command

pytestmark = pytest.mark.slow

FIGURES = list(REPORT_FIGURES)
TABLES = [
    "results.csv",
    "results.parquet",
    "summary.csv",
    "summary.md",
    "table.md",
    "table.tex",
    "break_even.csv",
    "differences.csv",
    "decisions.json",
    "training_curves.csv",
    "diversity.csv",
]


def report_dir(workdir):
    return workdir / "results" / "report"


def test_report_has_every_figure_and_table(tiny_run):
    workdir, config, _ = tiny_run
    out = report_dir(workdir)
    for name in TABLES + [f"{figure}.{ext}" for figure in FIGURES for ext in ("pdf", "png")]:
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "results.csv")
    assert len(pd.read_parquet(out / "results.parquet")) == len(table)
    stage_sum = table[["energy_data_j", "energy_train_j", "energy_compress_j"]].sum(axis=1)
    assert (stage_sum - table["pipeline_energy_j"]).abs().max() < 1e-6
    assert (table["energy_evaluate_j"] > 0).all()
    from_scratch = table["producing_rule"] == "train_model"
    assert (table.loc[~from_scratch, "energy_compress_j"] > 0).all() and (~from_scratch).any()
    assert (table.loc[from_scratch, "energy_compress_j"] == 0).all()
    decisions = json.loads((out / "decisions.json").read_text())
    assert decisions["accuracy_target"] == config["report"]["accuracy_target"]
    summary = (out / "summary.md").read_text()
    assert "## Decisions" in summary and "## Break-even against the baseline" in summary
    assert "no interval" in summary  # the tiny run has one seed: no CI, and it says so
    tex = (out / "table.tex").read_text()
    assert "\\toprule" in tex and "$^\\dagger$" in tex  # estimated energy is footnoted
    diversity = pd.read_csv(out / "diversity.csv")
    assert {"raw", "cleaned", "sampled"} <= set(diversity["data"]) and (diversity["vendi_score"] > 1).all()
    assert "## Data diversity" in summary and "## Measurement protocol" in summary
    assert "## Repeatability and resolution" in summary
    curves = pd.read_csv(out / "training_curves.csv")
    assert "int8_dynamic" not in set(curves["variant"]) and "baseline" in set(curves["variant"])


def with_finished_run(checkout, run_dir):
    """`checkout` after the run made in `run_dir`: its results and Snakemake's record of the jobs
    that made them (.snakemake/metadata: without it --report warns of missing metadata for every
    file and its runtime statistics lose each job's start and end)."""
    shutil.rmtree(checkout / "results")  # the checkout's own holds only .gitkeep
    shutil.copytree(run_dir / "results", checkout / "results")
    shutil.copytree(run_dir / ".snakemake" / "metadata", checkout / ".snakemake" / "metadata")
    return checkout


def test_snakemake_report_html_holds_every_figure_with_its_caption(tiny_run, tmp_path):
    run_dir, config, _ = tiny_run
    checkout = with_finished_run(readme_checkout(tmp_path, config), run_dir)
    # As the README prints it: no --cores (the idle rule's threads once needed them at parse time).
    result = run_as_printed(readme_inline_command("What you get", "--report"), checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Missing metadata" not in result.stderr  # it knows the job behind every file
    html = (checkout / "report.html").read_text()
    # The front page describes the experiment, not a bare DAG.
    assert "what Green-AI techniques really buy" in html and "How to read the categories" in html
    for figure in FIGURES:
        assert f"{figure}.png" in html, figure
    # Each figure carries its labels (joulebench.report.figure_registry), the columns its category's
    # table of results shows.
    for figure in REGISTRY.values():
        assert f'"labels": {json.dumps(figure.labels())}' in html, figure.title
    assert "warning" not in result.stderr.lower(), result.stderr
    for caption in ("Pareto front on the means", "pipeline stage", "Validation accuracy against"):
        assert caption in html, caption


def test_rerunning_only_the_report_gives_identical_files(tiny_run):
    workdir, config, _ = tiny_run
    before = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in report_dir(workdir).iterdir()
    }
    run_snakemake(workdir, config, "--forcerun", "aggregate_report", "--allowed-rules", "aggregate_report")
    after = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in report_dir(workdir).iterdir()
    }
    assert after == before
