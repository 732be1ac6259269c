"""Resumable training: a job killed after epoch k and rerun ends with the uninterrupted run's weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import model_files
from joulebench import store
from joulebench.config import resolved_config
from joulebench.data import loader
from joulebench.data.splits import describe
from joulebench.train.checkpoint import ForeignCheckpointError
from joulebench.train.stages import train_model

ROOT = Path(__file__).resolve().parents[3]
TRAINING = {**resolved_config()["training"], "epochs": 4, "batch_size": 64, "lr": 3e-3}
ENERGY = {"power_per_core_w": 12.0, "memory_w_per_gb": 0.3725}
# One thread in every process: the same arithmetic order in the killed, resumed and reference runs.
JOB = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {scripts!r})
from joulebench.train.stages import train_model
train_model({inputs!r}, {outputs!r}, "small_cnn", {{}}, {training!r}, 0, {energy!r}, {checkpoint!r})
"""


@pytest.fixture
def dataset(tmp_path, digits_arrays):
    arrays, classes = digits_arrays
    splits, facts = tmp_path / "splits.npz", tmp_path / "dataset.json"
    store.save_arrays(splits, arrays)
    store.write_json(facts, describe(arrays, classes))
    return splits, facts


def train_in_process(dataset, out, checkpoint, seed=0, training=TRAINING):
    torch.set_num_threads(1)
    train_model(
        inputs_of(dataset), model_files(out), "small_cnn", {}, training, seed, ENERGY, str(checkpoint)
    )


def inputs_of(dataset) -> dict:
    splits, facts = map(str, dataset)
    return {"splits": splits, "facts": facts}


def start_job(dataset, out, checkpoint) -> subprocess.Popen:
    outputs = {key: str(path) for key, path in model_files(out).items()}
    code = JOB.format(
        scripts=str(ROOT / "workflow" / "scripts"), inputs=inputs_of(dataset), outputs=outputs,
        training=TRAINING, energy=ENERGY, checkpoint=str(checkpoint),
    )  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, job: subprocess.Popen, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert job.poll() is None, f"the job ended before its first checkpoint:\n{job.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def assert_same_weights(dir_a: Path, dir_b: Path) -> None:
    a, b = store.load_tensors(dir_a / "model.pt"), store.load_tensors(dir_b / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow  # training subprocesses: ~30 s on an idle 2-core machine
def test_resume_after_sigkill_gives_the_uninterrupted_result(tmp_path, dataset):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train_in_process(dataset, reference, tmp_path / "ref.pt")

    checkpoint = tmp_path / "ckpt" / "last.pt"
    job = start_job(dataset, resumed, checkpoint)
    wait_for(checkpoint, job)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert checkpoint.exists() and not (resumed / "model.pt").exists()
    # The checkpoint is plain tensors and containers: it loads with weights_only=True.
    killed_after = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= killed_after < TRAINING["epochs"]

    train_in_process(dataset, resumed, checkpoint)
    assert_same_weights(reference, resumed)
    assert not checkpoint.exists(), "the checkpoint is removed once the outputs are written"
    learned = ["epoch", "train_loss", "train_accuracy", "val_accuracy"]
    resumed_history = pd.read_csv(resumed / "history.csv")[learned]
    pd.testing.assert_frame_equal(resumed_history, pd.read_csv(reference / "history.csv")[learned])
    summary = json.loads((resumed / "training.json").read_text())
    assert summary["resumed_after_epoch"] == killed_after
    assert (
        summary["final_val_accuracy"]
        == json.loads((reference / "training.json").read_text())["final_val_accuracy"]
    )
    # Energy: every epoch counted once, earlier attempts' epochs from the checkpoint.
    record = json.loads((resumed / "energy.json").read_text())
    assert [w["window"] for w in record["windows"]] == [f"epoch{n}" for n in range(1, 5)]
    assert record["resumed"]["after_epoch"] == killed_after
    prior = sum(w["joules"] for w in record["windows"][:killed_after])
    assert record["resumed"]["prior_epochs_joules"] == pytest.approx(prior)
    this_attempt = record["joules"] - prior
    assert this_attempt >= sum(w["joules"] for w in record["windows"][killed_after:]) * 0.999


@pytest.mark.slow  # training subprocesses: ~30 s on an idle 2-core machine
def test_sigterm_exits_nonzero_and_leaves_a_complete_checkpoint(tmp_path, dataset):
    checkpoint = tmp_path / "ckpt" / "last.pt"
    out = tmp_path / "out"
    job = start_job(dataset, out, checkpoint)
    wait_for(checkpoint, job)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 143, stderr
    assert not (out / "model.pt").exists()
    assert [p.name for p in checkpoint.parent.iterdir()] == ["last.pt"], "no temp file left behind"
    assert store.load_tensors(checkpoint)["epoch"] >= 1


@pytest.mark.slow  # training subprocesses: ~30 s on an idle 2-core machine
def test_a_foreign_checkpoint_is_refused(tmp_path, dataset):
    checkpoint = tmp_path / "last.pt"
    job = start_job(dataset, tmp_path / "out", checkpoint)
    wait_for(checkpoint, job)
    job.send_signal(signal.SIGKILL)
    job.wait()
    with pytest.raises(ForeignCheckpointError, match=f"rm {checkpoint}"):
        train_in_process(dataset, tmp_path / "other", checkpoint, seed=1)
    assert os.path.exists(checkpoint), "a refused checkpoint is left for the user to inspect"


def test_rng_state_round_trip_covers_the_shuffle_and_online_augmentation(digits_arrays):
    from joulebench.train.checkpoint import restore_rng_state, rng_state

    arrays = digits_arrays[0]
    flips = [{"name": "HorizontalFlip", "params": {"p": 0.5}}]

    def epoch(batches):
        return torch.cat([images for images, _ in batches])

    first = loader.loader(arrays, "train", 256, shuffle=True, seed=0, augment=flips)
    epoch(first)
    saved = rng_state(first, torch.device("cpu"))
    expected = epoch(first)
    fresh = loader.loader(arrays, "train", 256, shuffle=True, seed=0, augment=flips)
    restore_rng_state(saved, fresh, torch.device("cpu"))
    assert torch.equal(epoch(fresh), expected)


def window(name, joules, device_id="cpu:package0", seconds=2.0):
    device = {"joules": joules, "source": "rapl", "name": "cpu", "device_id": device_id}
    return {
        "window": name, "wall_time_s": seconds, "measured": True, "joules": joules, "source": "rapl",
        "measured_joules": joules, "estimated_joules": 0.0,
        "parts": [{"part": "cpu0", "joules": joules, "source": "rapl"}],
        "short_window": False, "busy_host": False, "devices": {"cpu0": device},
        "estimate": {"joules": 1.0, "cpu_seconds": 0.5},
    }  # fmt: skip


def test_merged_energy_counts_each_epoch_once_across_attempts():
    from joulebench.train.checkpoint import merge_prior_energy

    current = {**window("rule:train_model", 50.0, seconds=6.0), "windows": [window("epoch3", 40.0)]}
    current["short_windows"] = current["busy_host_windows"] = []
    prior = [window("epoch1", 30.0), window("epoch2", 35.0, device_id="cpu:package0@other-node")]
    merged = merge_prior_energy(current, prior, resumed_after_epoch=2)
    assert merged["joules"] == 50.0 + 30.0 + 35.0
    assert merged["wall_time_s"] == 6.0 + 2.0 + 2.0
    assert [w["window"] for w in merged["windows"]] == ["epoch1", "epoch2", "epoch3"]
    assert merged["devices"]["cpu0"]["joules"] == 80.0, "same physical device: added"
    assert merged["devices"]["cpu0@cpu:package0@other-node"]["joules"] == 35.0, "another device: kept apart"
    assert merged["parts"] == [{"part": "cpu0", "joules": 115.0, "source": "rapl"}]
    assert merged["measured_joules"] == 115.0 and merged["estimated_joules"] == 0.0
    assert merged["resumed"] == {
        "after_epoch": 2,
        "prior_epochs_joules": 65.0,
        "prior_epochs_wall_time_s": 4.0,
        "not_counted": merged["resumed"]["not_counted"],
    }
    assert current["joules"] == 50.0, "the attempt's own record is not modified"
    assert merge_prior_energy(current, [], 0) is current


def test_resuming_restores_the_random_states_the_uninterrupted_run_has(tmp_path, digits_arrays):
    """After _resume, the global torch RNG, the loader's shuffle and the augmentation pipeline's
    numpy and python RNGs are where the uninterrupted run has them after the checkpointed epoch."""
    from joulebench.models import build_model
    from joulebench.train.checkpoint import Checkpointer, rng_state
    from joulebench.train.loop import _resume

    arrays = digits_arrays[0]
    flips = [{"name": "HorizontalFlip", "params": {"p": 0.5}}]
    cpu = torch.device("cpu")
    recipe = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "image_size": [8, 8]}

    def run_state():
        model = build_model(recipe)
        optimizer = torch.optim.AdamW(model.parameters())
        batches = loader.loader(arrays, "train", 256, shuffle=True, seed=0, augment=flips)
        return model, optimizer, torch.amp.GradScaler("cpu", enabled=False), batches

    def epoch(batches):
        images = torch.cat([images for images, _ in batches])
        return images, torch.rand(4)  # the next epoch's draws: shuffle, flips, global torch RNG

    torch.manual_seed(0)
    model, optimizer, scaler, batches = run_state()
    epoch(batches)
    saved = rng_state(batches, cpu)
    history = [{"epoch": 1, "val_accuracy": 0.5}]
    checkpointer = Checkpointer(tmp_path / "last.pt", "run")
    checkpointer.save(
        {"epoch": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
         "scaler": scaler.state_dict(), "rng": saved, "history": history, "windows": []}
    )  # fmt: skip
    expected_images, expected_draws = epoch(batches)

    torch.manual_seed(1234)  # the rerun is a new process, its RNGs elsewhere
    model, optimizer, scaler, resumed = run_state()
    assert (
        _resume(Checkpointer(tmp_path / "last.pt", "run"), model, optimizer, scaler, resumed, cpu) == history
    )
    restored = rng_state(resumed, cpu)
    assert torch.equal(restored["torch"], saved["torch"])
    assert torch.equal(restored["loader"], saved["loader"])
    assert json.loads(restored["augment"]) == json.loads(saved["augment"])  # numpy and python RNGs
    images, draws = epoch(resumed)
    assert torch.equal(images, expected_images) and torch.equal(draws, expected_draws)
