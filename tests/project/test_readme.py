"""The README's commands, run as it prints them (beside .ci/run, which runs its test command)."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, readme_checkout, run_as_printed
from readme import readme_commands

DOCS = sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {
        re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-") for heading in headings
    }


def test_the_readme_keeps_two_set_up_commands_and_prints_the_fast_suite():
    assert len(readme_commands("Two commands")) == 2
    assert '.venv/bin/python -m pytest -m "not slow"' in readme_commands("Tests")


@pytest.mark.slow  # it collects the whole suite in a copy of the checkout
def test_the_fast_suite_command_selects_the_fast_suite_as_printed(tmp_path):
    # Every test it selects runs in the full suite (command 2): here the printed command itself is
    # run, unchanged, in a checkout laid out as the README has it, and only collects (pytest reads
    # PYTEST_ADDOPTS), so its marker expression and collection are what is checked.
    (command,) = [c for c in readme_commands("Tests") if "pytest" in c]
    result = run_as_printed(command, readme_checkout(tmp_path), env={"PYTEST_ADDOPTS": "--collect-only -q"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    selected, collected, deselected = map(
        int, re.search(r"(\d+)/(\d+) tests collected \((\d+) deselected\)", result.stdout).groups()
    )
    assert selected == collected - deselected and selected > 200 and deselected > 20


@pytest.mark.slow  # it needs a finished run (the shared tiny run)
def test_job_overhead_benchmark_runs_as_printed_on_a_finished_run(tiny_run, tmp_path):
    # A checkout after the run, without touching the shared run: its results, our scripts.
    workdir = tmp_path
    for name in ("results", "benchmarks"):
        os.symlink(tiny_run[0] / name, workdir / name)
    os.symlink(ROOT / "bench", workdir / "bench")
    (command,) = [c for c in readme_commands("Tests") if "bench_job_overhead" in c]
    argv = shlex.split(command)
    assert argv[0] == "python"
    result = subprocess.run([sys.executable, *argv[1:]], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line}
    for rule in ("prepare_dataset", "train_model", "evaluate_model", "compare_inference"):
        jobs, job_s, measured_s, startup_s, _ = map(float, rows[rule])
        # prepare_dataset's window (the digits, in memory) is shorter than the 0.1 s printed.
        assert jobs >= 1 and job_s > measured_s >= 0 and startup_s > 0, (rule, rows[rule])
        assert measured_s > 0 or rule == "prepare_dataset", (rule, rows[rule])
    total_jobs = sum(int(rows[rule][0]) for rule in rows if rule not in ("total", "run:"))
    assert int(rows["total"][0]) == total_jobs == len(list((workdir / "benchmarks").rglob("*.tsv")))


def test_every_link_of_the_readme_and_the_docs_pages_resolves():
    for page in [ROOT / "README.md", *DOCS]:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.relative_to(ROOT)}: {target}"
            if anchor:
                assert anchor in anchors(linked), f"{page.relative_to(ROOT)}: {target}"


def test_the_readme_links_every_docs_page():
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in LINK.findall((ROOT / "README.md").read_text())
    }
    assert [page for page in DOCS if page not in linked] == []


def test_the_docs_pages_print_no_shell_commands():
    # Commands are printed in the README, whose tests run them as printed; a docs page names a
    # script by its path instead.
    for page in DOCS:
        assert not re.search(r"^\s*```(bash|sh|shell|console)\b", page.read_text(), re.MULTILINE), page
