"""Lint: ruff, snakefmt and `snakemake --lint`, in the fast suite (seconds, no workflow run)."""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BIN = Path(sys.executable).parent


def tool(name, *args):
    """Run a tool installed beside this Python (the project's venv)."""
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, cwd=ROOT)


def test_snakemake_lint_is_clean():
    result = tool("snakemake", "--lint", "--cores", "1")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_and_snakefmt_pass():
    for command in (
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("snakefmt", "--check", "Snakefile", "workflow/rules"),
    ):
        result = tool(*command)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"
