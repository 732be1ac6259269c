import pytest
import torch
import torch.nn.functional as F

from joulebench.energy import EnergyMeter
from joulebench.models import build_model
from joulebench.train import (
    TrainSettings,
    accuracy,
    distillation_loss,
    effective_precision,
    seed_everything,
    train,
)

RECIPE = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10}


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
    arrays, _ = digits_arrays
    first, _, _ = run(arrays, seed=3, epochs=1)
    second, _, _ = run(arrays, seed=3, epochs=1)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bf16_training_computes_in_bf16(digits_arrays):
    arrays, _ = digits_arrays
    seen = []
    model = build_model(RECIPE)
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with EnergyMeter("test") as meter:
        train(model, arrays, TrainSettings(1, 256, 3e-3, precision="bf16"), meter)
    assert torch.bfloat16 in seen
