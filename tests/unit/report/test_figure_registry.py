"""The report's figures have one owner, joulebench.report.figure_registry: the workflow declares its
figures from it, the package draws them from it, and the tests list them from it."""

import pytest
import yaml
from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

import conftest
from conftest import ROOT, tiny_config
from joulebench.report import figures as report_figures
from joulebench.report.figure_registry import FIGURES, figure_files


@pytest.fixture(scope="module")
def report_rule(tmp_path_factory):
    """The aggregate_report rule as Snakemake parses the workflow on the tiny config (no job runs)."""
    workdir = tmp_path_factory.mktemp("parse")
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[workdir / "config.yaml"]),
            snakefile=ROOT / "Snakefile",
            workdir=workdir,
        )
        # The API has no public view of a parsed rule's outputs and their report flags.
        yield workflow._workflow.get_rule("aggregate_report")


def test_every_figure_has_a_caption_and_a_title_of_its_own():
    for name in FIGURES:
        assert (ROOT / "workflow" / "report" / f"{name}.rst").is_file(), name
    titles = [figure.title for figure in FIGURES.values()]
    assert len(set(titles)) == len(titles)


def test_the_workflow_declares_each_registry_figure_with_its_category_and_labels(report_rule):
    outputs = dict(report_rule.output.items())
    for name, (pdf, png) in figure_files("results/report").items():
        assert [str(path) for path in outputs[name]] == [pdf, png], name
    flagged = {str(path): path.flags["report"] for path in report_rule.output if path.flags.get("report")}
    figures = {path: flag for path, flag in flagged.items() if flag.category != "Tables"}
    assert sorted(figures) == sorted(png for _pdf, png in figure_files("results/report").values())
    for name, figure in FIGURES.items():
        flag = figures[f"results/report/{name}.png"]
        assert (flag.category, flag.labels) == (figure.category, {"figure": figure.title})


def test_the_tests_list_the_registry():
    assert tuple(FIGURES) == conftest.REPORT_FIGURES
    assert list(conftest.figure_files("out")) == list(FIGURES)


def test_the_package_refuses_files_missing_a_registry_figure(tmp_path):
    files = conftest.figure_files(tmp_path)
    del files["time_vs_energy"]
    with pytest.raises(KeyError, match="time_vs_energy"):
        report_figures.write_figures(None, None, files)
