import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from joulebench.report.figure_registry import FIGURES
from joulebench.report.figure_registry import figure_files as registry_files

ROOT = Path(__file__).resolve().parents[1]
# Keep tests on the two cores the way the workflow's rules do.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def artifact(directory) -> tuple[Path, Path]:
    """The weights and recipe files of a model saved under `directory`, named as the rules declare them."""
    return Path(directory) / "model.pt", Path(directory) / "model.json"


def model_files(directory) -> dict:
    """Every file a training rule declares for one model (workflow/rules/train.smk), under `directory`."""
    weights, recipe = artifact(directory)
    directory = Path(directory)
    files = {"history": "history.csv", "energy": "energy.json", "training": "training.json"}
    return {"model": weights, "recipe": recipe, **{key: directory / name for key, name in files.items()}}


# The figures of the report, by name: the package's registry, which the workflow declares.
REPORT_FIGURES = tuple(FIGURES)


def report_files(directory) -> dict:
    """The aggregate_report rule's declared outputs (workflow/rules/report.smk), under `directory`."""
    directory = Path(directory)
    names = {
        "table": "results.csv",
        "parquet": "results.parquet",
        "summary_table": "summary.csv",
        "break_even": "break_even.csv",
        "differences": "differences.csv",
        "curves": "training_curves.csv",
        "diversity_table": "diversity.csv",
        "decisions": "decisions.json",
        "summary": "summary.md",
        "markdown": "table.md",
        "latex": "table.tex",
        "config": "config.yaml",
    }
    files = {key: directory / name for key, name in names.items()}
    return files | figure_files(directory)


def figure_files(directory) -> dict:
    """Each report figure's declared [PDF, PNG] by figure name (report_figures in common.smk)."""
    return {name: [Path(pdf), Path(png)] for name, (pdf, png) in registry_files(directory).items()}


def tiny_config(**overrides) -> dict:
    """The shipped config shrunk to seconds: one seed, one epoch, every variant kind."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["seeds"] = [0]
    config["training"]["epochs"] = 1
    for variant in config["variants"].values():
        for key in ("finetune_epochs", "epochs"):
            if key in variant:
                variant[key] = 1
    config["evaluation"].update(
        latency_repeats=5,
        warmup=1,
        throughput_repeats=1,
        inference_min_seconds=0.2,
        warmup_seconds=0.0,
        rounds=2,
    )
    for key, value in overrides.items():
        config[key] = value
    return config


def snakemake_command(workdir: Path, config: dict, *args: str, profile: Path | None = None) -> list[str]:
    """The command that runs the real workflow from this checkout on `config`, results under
    `workdir`: on 2 local cores, or with every setting from a workflow `profile` (SLURM)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config_path),
    ]  # fmt: skip
    if profile is not None:
        command += ["--workflow-profile", str(profile)]
    else:
        command += ["--cores", "2"]
    return [*command, *args]


def run_snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real workflow from this checkout on `config`, with results under `workdir`."""
    result = subprocess.run(
        snakemake_command(workdir, config, *args), capture_output=True, text=True, cwd=workdir
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def checkout_files() -> list[str]:
    """This checkout's files, tracked or untracked but not ignored, as paths relative to ROOT."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    # A tracked file deleted from the working tree is not part of it.
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def readme_checkout(directory: Path, config: dict | None = None) -> Path:
    """A checkout laid out the way the README's commands assume, in `directory`: a copy of this
    checkout's files, `.venv` linked to the environment running the tests, and `config` (if given)
    as config/config.yaml."""
    for name in checkout_files():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, directory / name)
    (directory / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    if config is not None:
        (directory / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


def run_as_printed(command: str, checkout: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command the README prints, unchanged, the way a shell in `checkout` runs it; `env`
    adds variables to the environment."""
    return subprocess.run(
        command, shell=True, cwd=checkout, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real run of the workflow on the tiny config, shared by the integration tests."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    config = tiny_config()
    result = run_snakemake(workdir, config)
    return workdir, config, result


@pytest.fixture
def digits_arrays():
    from joulebench.data import sources, splits

    images, labels, classes = sources.load_digits_source()
    return splits.split_arrays(images, labels, 0.15, 0.2, seed=0), classes


def make_image_tree(root: Path, images_per_class: dict | None = None) -> None:
    """An ImageFolder of real random 6x6 RGB PNG files, `{class: count}` (default cat and dog, 3
    each); a class with 0 images gets an empty folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in (images_per_class or {"cat": 3, "dog": 3}).items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 255, size=(6, 6, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")


def has_tool(name: str) -> bool:
    return shutil.which(name) is not None


# A `quiet` test is skipped where the 1-minute load average exceeds this share of the host's cores:
# other work then fills the windows it measures, or delays the timings it asserts.
QUIET_LOAD_PER_CORE = 0.5


def busy_host_reason() -> str | None:
    """Why this host is too loaded for a `quiet` test now, or None where it is quiet enough."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= QUIET_LOAD_PER_CORE * cores:
        return None
    return (
        f"needs a quiet host: the 1-minute load average is {load:.1f}, over half of this host's "
        f"{cores} cores; rerun it when other work has ended"
    )


def pytest_runtest_setup(item):
    """A `quiet` test runs only on a host quiet at its start (busy_host_reason)."""
    if item.get_closest_marker("quiet") and (reason := busy_host_reason()):
        pytest.skip(f"{item.name} {reason}")


# The suite runs in two pytest-xdist workers (pyproject's addopts: -n 2), one group of modules each.
# The SLURM tests spend most of their time waiting on the cluster's queue and the executor's status
# polls; these modules, none of which uses the shared tiny run (it would be made twice), share
# their worker, so the two take about as long.
BESIDE_SLURM = {
    "test_slurm.py",
    "test_gpu_check.py",
    "test_simulated_host.py",
    "test_pt2e_patterns.py",
    "test_data_parallel.py",
    "test_own_model.py",
}


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scope scheduling with two scopes: BESIDE_SLURM's modules, and the rest."""
    from xdist.scheduler import LoadScopeScheduling

    class TwoGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "slurm" if Path(nodeid.split("::")[0]).name in BESIDE_SLURM else "local"

    return TwoGroups(config, log)


def pytest_collection_modifyitems(items):
    """Every test under tests/workflow/ runs the real workflow: marked slow, whatever its file says."""
    workflow = ROOT / "tests" / "workflow"
    for item in items:
        if workflow in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
