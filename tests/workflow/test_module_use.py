"""joulebench used by another workflow through Snakemake's `module` directive: the other workflow's
own folder, config and working directory, every rule imported under a prefix."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_config

pytestmark = pytest.mark.slow

HOST_SNAKEFILE = f"""\
configfile: "config.yaml"


module joulebench:
    snakefile:
        "{ROOT / "Snakefile"}"
    config:
        config


use rule * from joulebench as joulebench_*
"""


def run_host(workdir, *args):
    """Snakemake on the host workflow in `workdir`, with joulebench's own workflow profile (a
    profile is the main workflow's: the host names joulebench's to keep its measured jobs apart)."""
    command = [
        sys.executable, "-m", "snakemake", "--cores", "2",
        "--workflow-profile", str(ROOT / "profiles" / "default"), *args,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def host(tmp_path):
    (tmp_path / "Snakefile").write_text(HOST_SNAKEFILE)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    return tmp_path


def test_a_workflow_using_joulebench_as_a_module_plans_every_job_and_runs_the_data_stage(host):
    dry = run_host(host, "--dry-run")
    # Every rule is there under its prefix, down to the report; nothing names a missing rule.
    for rule in ("prepare_dataset", "clean_dataset", "train_model", "evaluate_model", "aggregate_report"):
        assert f"joulebench_{rule}" in dry.stdout, rule
    assert "not present in the Snakefile" not in dry.stdout + dry.stderr
    before = sorted(path.relative_to(ROOT) for path in (ROOT / "results").rglob("*"))

    run_host(host, "results/data/digits/cleaning_report.json")
    data = host / "results" / "data" / "digits"
    cleaning = json.loads((data / "cleaning_report.json").read_text())
    counts = {
        state: sum(split["count"] for split in cleaning[state].values()) for state in ("before", "after")
    }
    assert counts["before"] - counts["after"] == cleaning["removed_total"] and counts["after"] > 0
    for stage, rule in ((data / "raw", "prepare_dataset"), (data, "clean_dataset")):
        record = json.loads((stage / "energy.json").read_text())
        assert record["rule"] == rule and record["joules"] > 0
    assert (host / "logs" / "clean_dataset" / "digits.log").is_file()
    # Results, logs and benchmarks go to the host's working directory, none into this checkout.
    assert sorted(path.relative_to(ROOT) for path in (ROOT / "results").rglob("*")) == before
