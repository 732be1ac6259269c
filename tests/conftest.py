import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Keep tests on the two cores the way the workflow's rules do.
os.environ.setdefault("OMP_NUM_THREADS", "2")


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


def snakemake_command(
    workdir: Path, config: dict, *args: str, profile: Path | None = None, cores: bool = True
) -> list[str]:
    """The command that runs the real workflow from this checkout on `config`, results under
    `workdir`: on 2 local cores, or with every setting from a workflow `profile` (SLURM). `cores`
    False leaves --cores out, as the README's --unlock and --report commands do."""
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
    elif cores:
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real run of the workflow on the tiny config, shared by the integration tests."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    config = tiny_config()
    result = run_snakemake(workdir, config)
    return workdir, config, result


@pytest.fixture
def digits_arrays():
    from joulebench import data

    images, labels, classes = data.load_digits_source()
    return data.split_arrays(images, labels, 0.15, 0.2, seed=0), classes


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
