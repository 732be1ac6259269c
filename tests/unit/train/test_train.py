import multiprocessing
import os
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joulebench.devices import CPU
from joulebench.energy.meter import EnergyMeter
from joulebench.evaluate.accuracy import accuracy
from joulebench.models import build_model
from joulebench.precision import DeviceOutOfMemory, effective_precision, out_of_memory_hint
from joulebench.train.checkpoint import Checkpointer
from joulebench.train.loop import (
    Distillation,
    TrainSettings,
    distillation_loss,
    seed_everything,
    train,
    training_summary,
)

RECIPE = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10}


def subset(arrays: dict, train: int = 512, val: int = 128) -> dict:
    """The first samples of train and val: enough to check what runs, cheap on a loaded CPU."""
    return {**arrays, "train_x": arrays["train_x"][:train], "train_y": arrays["train_y"][:train],
            "val_x": arrays["val_x"][:val], "val_y": arrays["val_y"][:val]}  # fmt: skip


def test_distillation_loss_matches_its_definition():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 10), torch.randn(5, 10)
    labels = torch.randint(0, 10, (5,))
    t, alpha = 3.0, 0.6
    p_teacher = F.softmax(teacher / t, 1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, 1))).sum(1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    assert distillation_loss(student, teacher, labels, t, alpha) == pytest.approx(expected.item(), rel=1e-5)
    # A student equal to its teacher pays no distillation term.
    same = distillation_loss(teacher, teacher, labels, t, alpha=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_effective_precision_is_what_autocast_computes():
    cpu = torch.device("cpu")
    assert effective_precision("fp32", cpu) == "fp32"
    assert effective_precision("bf16", cpu) == "bf16"
    got = effective_precision("fp16", cpu)
    assert got in ("fp16", "bf16")
    with torch.autocast("cpu", dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[got]):
        out = torch.nn.Linear(4, 4)(torch.ones(1, 4))
    assert out.dtype is {"fp16": torch.float16, "bf16": torch.bfloat16}[got]


def run(arrays, seed, epochs=2, precision="fp32"):
    seed_everything(seed)
    model = build_model(RECIPE)
    with EnergyMeter("test") as meter:
        history = train(model, arrays, TrainSettings(epochs, 64, 3e-3, precision=precision, seed=seed), meter)
    return model, history, meter.record()


def test_training_learns_and_logs_each_epoch(digits_arrays):
    arrays, _ = digits_arrays
    model, history, record = run(arrays, seed=0)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["val_accuracy"] > 0.85
    assert accuracy(model, arrays, "test") > 0.85
    assert [w["window"] for w in record["windows"]] == ["epoch1", "epoch2"]
    assert history[-1]["cumulative_joules"] == pytest.approx(sum(w["joules"] for w in record["windows"]))
    assert all(row["energy_source"].startswith("estimate:") for row in history)


def test_same_seed_same_weights(digits_arrays):
    arrays = subset(digits_arrays[0])
    first, _, _ = run(arrays, seed=3, epochs=1)
    second, _, _ = run(arrays, seed=3, epochs=1)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bf16_training_computes_in_bf16(digits_arrays):
    arrays = subset(digits_arrays[0])
    seen = []
    model = build_model(RECIPE)
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with EnergyMeter("test") as meter:
        train(model, arrays, TrainSettings(1, 256, 3e-3, precision="bf16"), meter)
    assert torch.bfloat16 in seen


def test_early_stop_at_target_reports_time_and_energy_to_accuracy(digits_arrays):
    arrays, _ = digits_arrays
    seed_everything(0)
    model = build_model(RECIPE)
    settings = TrainSettings(5, 64, 3e-3, target_val_accuracy=0.5)
    with EnergyMeter("test") as meter:
        history = train(model, arrays, settings, meter)
    assert len(history) == 1, "digits passes 50% validation accuracy in the first epoch"
    summary = training_summary(history, settings)
    assert summary["stopped_early"] and summary["epoch_reaching_target"] == 1
    assert summary["time_to_accuracy_s"] == history[0]["cumulative_seconds"] > 0
    assert summary["energy_to_accuracy_j"] == history[0]["cumulative_joules"] > 0
    assert summary["energy_source"] == "estimate:green-algorithms"


def test_summary_of_a_target_never_reached_is_null():
    rows = [
        {
            "epoch": n,
            "val_accuracy": acc,
            "cumulative_seconds": n,
            "cumulative_joules": 10 * n,
            "energy_source": "rapl",
        }
        for n, acc in [(1, 0.5), (2, 0.8), (3, 0.85)]
    ]
    reached = training_summary(rows, TrainSettings(3, 64, 1e-3, target_val_accuracy=0.8))
    assert (
        reached["epoch_reaching_target"],
        reached["time_to_accuracy_s"],
        reached["energy_to_accuracy_j"],
    ) == (
        2,
        2,
        20,
    )
    assert not reached["stopped_early"], "the run used every epoch it was given"
    never = training_summary(rows, TrainSettings(3, 64, 1e-3, target_val_accuracy=0.9))
    assert never["time_to_accuracy_s"] is None and never["energy_to_accuracy_j"] is None
    assert never["best_val_accuracy"] == 0.85


def test_distillation_teacher_forwards_run_inside_the_student_epoch_windows(digits_arrays):
    arrays = subset(digits_arrays[0])
    seed_everything(0)
    teacher = build_model(RECIPE)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(time.time()))
    student = build_model({**RECIPE, "width": 4})
    with EnergyMeter("test") as meter:
        train(student, arrays, TrainSettings(1, 256, 3e-3), meter, Distillation(teacher, 2.0, 0.5))
    (window,) = meter.windows
    assert len(calls) == -(-len(arrays["train_y"]) // 256), "one teacher forward per student batch"
    assert all(window["start_unix"] <= t <= window["end_unix"] for t in calls)


def test_fp16_training_computes_in_the_effective_precision(digits_arrays):
    arrays = subset(digits_arrays[0])
    precision = effective_precision("fp16", torch.device("cpu"))
    seen = []
    model = build_model(RECIPE)
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with EnergyMeter("test") as meter:
        train(model, arrays, TrainSettings(1, 256, 3e-3, precision=precision), meter)
    assert {"fp16": torch.float16, "bf16": torch.bfloat16}[precision] in seen
    assert all(p.dtype is torch.float32 for p in model.parameters()), "autocast keeps fp32 master weights"


def test_channels_last_reaches_the_convolutions(digits_arrays):
    arrays = subset(digits_arrays[0])
    layouts = []
    model = build_model(RECIPE)
    model.features[0].register_forward_hook(
        lambda m, i, o: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last))
    )
    with EnergyMeter("test") as meter:
        train(model, arrays, TrainSettings(1, 256, 3e-3, channels_last=True), meter)
    assert layouts and all(layouts)


@pytest.mark.slow
def test_compiled_training_learns(digits_arrays):
    # Batches that divide the subset evenly: no recompilation for a ragged last batch.
    arrays = subset(digits_arrays[0], train=1024, val=256)
    seed_everything(0)
    model = build_model(RECIPE)
    with EnergyMeter("test") as meter:
        history = train(model, arrays, TrainSettings(2, 128, 3e-3, compile=True), meter)
    assert history[-1]["val_accuracy"] > 0.8
    assert not any(key.startswith("_orig_mod") for key in model.state_dict()), "saved weights stay plain"


class FailsInSecondEpoch(nn.Module):
    """The real small CNN, whose training forwards fail the way a device would once the first
    epoch's batches have run: `failure` gets the logits and returns or raises (simulated fault)."""

    def __init__(self, batches_per_epoch: int, failure):
        super().__init__()
        self.net = build_model(RECIPE)
        self.healthy_batches = batches_per_epoch
        self.failure = failure

    def forward(self, images):
        logits = self.net(images)
        if self.training:
            self.healthy_batches -= 1
            if self.healthy_batches < 0:
                return self.failure(logits)
        return logits


def simulated_cuda_oom(logits):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


@pytest.mark.parametrize(
    "failure, error, message",
    [
        (
            lambda logits: logits * float("nan"),
            FloatingPointError,
            "loss became nan in epoch 2; lower the learning rate (now 0.003) or use fp32 precision",
        ),
        (
            simulated_cuda_oom,
            DeviceOutOfMemory,
            "out of memory on cpu during training epoch 2 with batch size 64; lower training.batch_size "
            "(try 32) or use a smaller model or precision bf16",
        ),
    ],
    ids=["nan_loss", "device_oom"],
)
def test_a_failing_epoch_names_itself_and_keeps_the_last_good_checkpoint(
    tmp_path, digits_arrays, failure, error, message
):
    arrays = subset(digits_arrays[0])
    model = FailsInSecondEpoch(batches_per_epoch=512 // 64, failure=failure)
    checkpointer = Checkpointer(tmp_path / "last.pt", "test-run")
    settings = TrainSettings(epochs=3, batch_size=64, lr=3e-3)
    with EnergyMeter("train") as meter, pytest.raises(error) as err:
        train(model, arrays, settings, meter, checkpointer=checkpointer)
    assert str(err.value) == message
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    assert all(torch.isfinite(tensor).all() for tensor in saved["model"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_cpu_allocation_failure_reads_as_out_of_memory():
    # The CPU allocator's own error: ask for far more memory than the machine has.
    fits = out_of_memory_hint(torch.device("cpu"), "evaluation", 256, "evaluation.batch_size")
    expected = "during evaluation with batch size 256; lower evaluation.batch_size"
    with pytest.raises(DeviceOutOfMemory, match=expected), fits:
        torch.empty(2**60, dtype=torch.uint8)


# -- the GPU path, without a GPU: CUDA's answers are MOCKED where the test says so ---------------


class MockMeter:
    """MOCK of the meter train() uses (`placement`, `window(name)`): no Zeus, no energy counters,
    so a test sees only what training itself does."""

    def __init__(self, placement):
        self.placement = placement

    @contextmanager
    def window(self, name):
        window = SimpleNamespace(record=None)
        yield window
        window.record = {"joules": 1.0, "source": "mock"}


def test_cpu_training_with_workers_and_checkpoints_never_asks_for_cuda(tmp_path, digits_arrays, monkeypatch):
    # Asking starts the CUDA driver (torch.cuda.is_available -> cudaGetDeviceCount) and arms
    # torch's fork guard; pinning batches creates a CUDA context. A CPU run of ours does neither.
    askers = []

    def is_available():
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("joulebench"):
            askers.append(caller)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    arrays = subset(digits_arrays[0], train=256, val=64)
    settings = TrainSettings(epochs=2, batch_size=64, lr=3e-3, loader_workers=2)
    checkpointer = Checkpointer(tmp_path / "last.pt", "test-run")
    history = train(build_model(RECIPE), arrays, settings, MockMeter(CPU), checkpointer=checkpointer)
    assert [row["epoch"] for row in history] == [1, 2]
    assert askers == []


def test_cpu_training_on_a_gpu_host_never_starts_cuda_in_its_optimizer_steps(digits_arrays, monkeypatch):
    # SIMULATED GPU host: torch reports a CUDA accelerator. Before each step torch.optim asks its
    # current stream whether it captures a CUDA graph, which on a real host starts CUDA and a
    # context on the GPU, inside the CPU rule's epoch window.
    asked = []
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda")
    )
    stream = SimpleNamespace(is_capturing=lambda: False)
    monkeypatch.setattr(torch.accelerator, "current_stream", lambda *args: asked.append(args) or stream)
    arrays = subset(digits_arrays[0], train=128, val=64)
    settings = TrainSettings(epochs=1, batch_size=64, lr=3e-3)
    history = train(build_model(RECIPE), arrays, settings, MockMeter(CPU))
    assert [row["epoch"] for row in history] == [1]
    assert asked == []


def test_loader_workers_end_with_the_training_when_an_epoch_fails(digits_arrays):
    # Persistent DataLoader workers live as long as the loader, which the exception's traceback
    # holds while it travels up through the rule's meter.
    arrays = subset(digits_arrays[0], train=256, val=64)
    settings = TrainSettings(epochs=2, batch_size=64, lr=3e-3, loader_workers=2)
    before = set(multiprocessing.active_children())
    model = FailsInSecondEpoch(batches_per_epoch=256 // 64, failure=simulated_cuda_oom)
    with pytest.raises(DeviceOutOfMemory) as failure:
        train(model, arrays, settings, MockMeter(CPU))
    assert failure.traceback  # still held, as a rule's meter holds it while it closes its window
    assert set(multiprocessing.active_children()) - before == set()


# train_model's declared outputs (joulebench.train.resume.write_trained), by name.
TRAINED_FILES = {
    "model": "model.pt",
    "recipe": "recipe.json",
    "history": "history.csv",
    "energy": "energy.json",
    "training": "training.json",
}
BAD_FORK = (
    "Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use "
    "the 'spawn' start method"
)


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="CUDA already started: torch skips _lazy_init")
def test_effective_precision_lets_a_cuda_start_failure_through(monkeypatch):
    # MOCK: CUDA cannot start in this process (torch's own message for a job forked after the
    # parent started the driver). That is not "bf16 unsupported": it must not become fp32.
    monkeypatch.setattr(torch.cuda, "_lazy_init", mock.MagicMock(side_effect=RuntimeError(BAD_FORK)))
    with pytest.raises(RuntimeError, match="Cannot re-initialize CUDA in forked subprocess"):
        effective_precision("bf16", torch.device("cuda"))


def test_effective_precision_falls_back_where_autocast_refuses_the_dtype(monkeypatch):
    # MOCK: a CUDA GPU without bf16; torch.autocast itself raises its "does not support" error.
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert effective_precision("bf16", torch.device("cuda")) == "fp32"


def test_numeric_flags_are_the_recipes_choice_and_land_in_the_training_records(tmp_path, digits_arrays):
    from joulebench import store
    from joulebench.precision import numeric_flags
    from joulebench.train.resume import train_resumably

    seed_everything(0)
    flags = numeric_flags()
    assert flags["deterministic_algorithms"] is True and flags["deterministic_algorithms_warn_only"] is True
    # TF32 and cuDNN's choices are torch's defaults: not set by the recipe.
    assert flags["cuda_matmul_allow_tf32"] is torch.backends.cuda.matmul.allow_tf32
    assert flags["cudnn_allow_tf32"] is torch.backends.cudnn.allow_tf32
    assert flags["cudnn_benchmark"] is torch.backends.cudnn.benchmark
    assert flags["cudnn_deterministic"] is torch.backends.cudnn.deterministic
    assert flags["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert flags["cublas_workspace_config"] == os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    outputs = {name: tmp_path / file for name, file in TRAINED_FILES.items()}
    arrays = subset(digits_arrays[0], train=128, val=64)
    settings = TrainSettings(epochs=1, batch_size=64, lr=3e-3)
    train_resumably("train_model", build_model(RECIPE), RECIPE, arrays, settings, CPU, {}, outputs, None, {})
    assert store.read_json(outputs["training"])["numerics"] == flags
    assert store.read_json(outputs["energy"])["numerics"] == flags
