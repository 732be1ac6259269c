"""Faults and interruptions: clear errors, nothing half-written, nothing lost on a rerun."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, make_image_tree, readme_checkout, run_as_printed, run_snakemake, tiny_config
from joulebench import store
from readme import readme_inline_command

# ---------------------------------------------------------------- outputs are atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp_files(tmp_path):
    target = tmp_path / "metrics.json"
    store.write_json(target, {"accuracy": 0.9})

    def crash(tmp):
        Path(tmp).write_text('{"accuracy": 0.')  # half a JSON, then the process "dies"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.write_atomic(target, crash)
    assert store.read_json(target) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_results_get_normal_file_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    store.write_json(tmp_path / "x.json", {})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_json_never_holds_nan(tmp_path):
    with pytest.raises(ValueError):
        store.write_json(tmp_path / "bad.json", {"joules": float("nan")})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- config paths stay inside results/


@pytest.mark.slow
def test_dataset_name_cannot_escape_the_results_tree(tmp_path):
    config = tiny_config()
    config["dataset"]["name"] = "../../etc"
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert "does not match '^[A-Za-z0-9_]+$'" in result.stdout + result.stderr


def test_no_eval_or_exec_of_config_values():
    # model.eval() is fine; the builtins eval/exec and unpickling are not.
    forbidden = re.compile(r"(?<![.\w])(eval|exec)\(|pickle\.loads?\(|weights_only=False")
    for path in (ROOT / "workflow" / "scripts").rglob("*.py"):
        match = forbidden.search(path.read_text())
        assert match is None, f"{path}: {match and match.group(0)}"


# ---------------------------------------------------------------- SIGKILL of the whole run


def _kill_when(process, condition, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            raise AssertionError("the run ended before it could be killed")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("the kill condition never became true")


# ---------------------------------------------------------------- bad data stops its rule


@pytest.mark.slow  # three real runs of the workflow (prepare_dataset fails): ~22 s
@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (
            {"cat": 20, "dog": 20, "emu": 0},
            "class folders without image files under '{root}': emu; add images",
        ),
        ({"cat": 20}, "dataset 'pets': every image is in one class ('cat'); a classifier needs at least two"),
        (
            {"cat": 20, "dog": 2},
            "cannot split 22 images into train/val/test with every class in each split; images per "
            "class: {'cat': 20, 'dog': 2}; add images to the small classes (smallest: 'dog', 2 images)",
        ),
    ],
    ids=["empty_class_folder", "single_class", "class_too_small_to_split"],
)
def test_bad_image_folder_fails_its_rule_with_the_message_and_no_output(tmp_path, classes, message):
    root = tmp_path / "pets"
    make_image_tree(root, classes)
    config = tiny_config(
        dataset={**tiny_config()["dataset"], "name": "pets", "source": "imagefolder", "root": str(root)}
    )
    result = run_snakemake(tmp_path / "run", config, check=False)
    assert result.returncode != 0
    assert (
        message.replace("{root}", str(root)) in result.stdout + result.stderr
    )  # the rule's log, shown on failure
    assert "Error in rule prepare_dataset" in result.stdout + result.stderr
    written = [p for p in (tmp_path / "run" / "results").rglob("*") if p.is_file()]
    assert written == []


# The README's run, on the two cores the tests keep to.
README_RUN = ".venv/bin/snakemake --cores 2"


@pytest.mark.slow
def test_sigkill_of_the_whole_run_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_run):
    reference_dir, config, _ = tiny_run
    # Run, kill and recover in a checkout as the README has it, so its recovery runs as printed.
    workdir = readme_checkout(tmp_path / "killed", config)
    process = subprocess.Popen(
        README_RUN,
        shell=True,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Kill everything (Snakemake and its job) once the first training job is running.
    trained = workdir / "logs" / "train_model"
    _kill_when(process, lambda: any(p.read_text().count("epoch 1/") == 0 for p in trained.rglob("*.log")))
    assert not (workdir / "results" / "report" / "results.csv").exists()

    # A SIGKILLed Snakemake cannot remove its lock; the documented recovery is --unlock, then rerun.
    locked = run_as_printed(README_RUN, workdir)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    unlocked = run_as_printed(readme_inline_command("When things go wrong", "--unlock"), workdir)
    assert unlocked.returncode == 0 and "Unlocked" in unlocked.stdout + unlocked.stderr
    rerun = run_as_printed(README_RUN, workdir)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    killed = pd.read_csv(workdir / "results/report/results.csv")
    reference = pd.read_csv(reference_dir / "results/report/results.csv")
    keys = ["model", "variant", "seed"]
    assert not killed.duplicated(keys).any()
    assert killed[keys].equals(reference[keys])
    deterministic = ["test_accuracy", "params", "nonzero_params", "macs"]
    pd.testing.assert_frame_equal(killed[deterministic], reference[deterministic])
    leftovers = [p for p in (workdir / "results").rglob("*.tmp")]
    assert leftovers == []


# ------------------------------------------------------------------- soak: a forced rerun


def _snapshot(workdir: Path) -> dict:
    files = sorted(p for p in workdir.rglob("*") if p.is_file() and ".snakemake" not in p.parts)
    return {str(p.relative_to(workdir)): p.stat().st_size for p in files}


@pytest.mark.slow
def test_a_forced_rerun_is_identical_and_disk_use_does_not_grow(tmp_path):
    config = tiny_config()
    config["variants"] = {k: v for k, v in config["variants"].items() if v["technique"] == "prune"}
    tables, weights, snapshots = [], [], []
    for _ in range(2):
        run_snakemake(tmp_path, config, "--forceall")
        tables.append(pd.read_csv(tmp_path / "results/report/results.csv"))
        models = (tmp_path / "results").rglob("model.pt")
        weights.append({str(p.relative_to(tmp_path)): store.load_tensors(p) for p in models})
        snapshots.append(_snapshot(tmp_path))
    deterministic = ["variant", "seed", "test_accuracy", "params", "nonzero_params", "macs"]
    for table in tables[1:]:
        pd.testing.assert_frame_equal(table[deterministic], tables[0][deterministic])
    assert weights[0]
    for later in weights[1:]:
        assert later.keys() == weights[0].keys()
        for path, state in later.items():
            for name, tensor in state.items():
                assert torch.equal(tensor, weights[0][path][name]), f"{path}: {name}"
    # The same files after the rerun: no temp files, stale checkpoints or duplicated outputs pile up.
    assert snapshots[1].keys() == snapshots[0].keys()
    assert sum(snapshots[1].values()) <= 1.05 * sum(snapshots[0].values())
