"""joulebench's version: written once, in pyproject.toml, and recorded in the report."""

import tomllib
from importlib import metadata

import yaml

import joulebench
from conftest import ROOT, tiny_config
from joulebench.report import aggregate
from joulebench.version import version


def test_the_package_version_is_the_projects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert joulebench.__version__ == project["version"] == "0.1.0"


def test_another_projects_pyproject_is_not_taken_for_joulebenchs(tmp_path):
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "someone-else"\nversion = "9.9.9"\n')
    try:
        installed = metadata.version("joulebench")
    except metadata.PackageNotFoundError:  # the tests run from the checkout, not an installed copy
        installed = "unknown"
    assert version(other) == installed
    assert version(tmp_path / "absent.toml") == installed


def test_the_reports_config_names_the_version_and_stays_a_config_file():
    config = tiny_config()
    text = aggregate.config_text(config)
    assert text.splitlines()[0] == "# The resolved config of this report, made by joulebench 0.1.0."
    assert yaml.safe_load(text) == config
