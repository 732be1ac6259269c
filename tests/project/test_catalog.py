"""The Snakemake workflow catalog's usage file (.snakemake-workflow-catalog.yml): its format, and
that every file it names exists."""

import re

import yaml

from conftest import ROOT

CATALOG = ROOT / ".snakemake-workflow-catalog.yml"
DEPLOYMENT_METHODS = {"conda", "apptainer", "apptainer+conda"}


def catalog() -> dict:
    return yaml.safe_load(CATALOG.read_text())


def test_the_catalog_file_has_the_standardized_usage_format():
    usage = catalog()["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert set(usage["mandatory-flags"]) == {"desc", "flags"}
    assert isinstance(usage["mandatory-flags"]["desc"], str) and usage["mandatory-flags"]["desc"]
    assert isinstance(usage["mandatory-flags"]["flags"], str | list)
    deployment = usage["software-stack-deployment"]
    assert set(deployment) <= DEPLOYMENT_METHODS
    assert all(isinstance(value, bool) for value in deployment.values()) and any(deployment.values())
    assert usage["report"] is True


def test_every_file_the_catalog_file_names_exists():
    text = re.sub(r"https?://\S+", "", CATALOG.read_text())
    named = set(re.findall(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]*\w|[\w-]+\.(?:md|txt|yaml|yml))", text))
    assert {"config/README.md", "profiles/default", "profiles/slurm", "config/config.yaml"} <= named
    for name in named:
        assert (ROOT / name).exists(), name


def test_what_the_catalog_file_promises_is_in_the_workflow():
    usage = catalog()["usage"]
    rules = "\n".join(path.read_text() for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    if usage["software-stack-deployment"].get("conda"):
        envs = set(re.findall(r'conda:\s+"\.\./\.\./(envs/[\w.]+)"', rules))
        assert envs and all((ROOT / env).is_file() for env in envs), envs
        # every rule that runs a script names its environment
        assert rules.count("script:") <= rules.count("conda:")
    if usage["report"]:
        assert re.search(r'^report: "workflow/report/workflow.rst"$', (ROOT / "Snakefile").read_text(), re.M)
        assert (ROOT / "workflow" / "report" / "workflow.rst").is_file()
