"""The evaluation rule's metrics: MACs as torchvision documents them, and sane latency/size fields."""

import pytest
import torch
import torchvision

from joulebench.energy import EnergyMeter, EstimateModel
from joulebench.evaluate import count_macs, evaluate, parameter_counts, percentile
from joulebench.models import build_model, save_model


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_counted_macs_match_torchvision_documentation(name):
    # torchvision's model docs list "GFLOPS" that are multiply-accumulates (meta["_ops"], in G).
    documented = torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"]
    assert documented == {"resnet18": 1.814, "mobilenet_v3_small": 0.057}[name]
    model = getattr(torchvision.models, name)().eval()
    counted = count_macs(model, torch.rand(1, 3, 224, 224)) / 1e9
    assert counted == pytest.approx(documented, rel=0.02)
    params, _ = parameter_counts(model)
    assert params == torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


def test_percentile_is_inclusive():
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 95) == pytest.approx(95.05)


def test_evaluate_reports_every_metric(tmp_path, digits_arrays):
    arrays, _ = digits_arrays
    recipe = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10}
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    save_model(model, recipe, tmp_path)
    settings = {
        "batch_size": 64,
        "warmup": 2,
        "latency_repeats": 10,
        "throughput_repeats": 2,
        "inference_min_seconds": 0.3,
        "threads": 1,
        "warmup_seconds": 0.05,
        "min_passes": 3,
        "rounds": 2,
        "max_gap_seconds": 0.0,
    }
    with EnergyMeter("test", EstimateModel()) as meter:
        metrics = evaluate(model, arrays, tmp_path / "model.pt", settings, meter)
    assert 0 <= metrics["test_accuracy"] <= 1
    assert metrics["size_bytes"] == (tmp_path / "model.pt").stat().st_size
    assert metrics["flops"] == 2 * metrics["macs"] == 2 * count_macs(model, torch.rand(1, 1, 8, 8))
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert 0.99 * metrics["params"] < metrics["nonzero_params"] <= metrics["params"]  # zero-init BN biases
    assert 0 < metrics["latency_p50_ms"] <= metrics["latency_p95_ms"]
    assert metrics["throughput_per_s"] > 0 and metrics["throughput_batch_size"] == 64
    assert metrics["inference_energy_source"] == "estimate:green-algorithms"
    assert metrics["inference_joules_per_1k"] > 0
    assert metrics["inference_passes"] >= 3 and metrics["inference_seconds"] >= 0.3
    assert (metrics["inference_device"], metrics["inference_precision"]) == ("cpu", "fp32")
    assert metrics["protocol"] == {
        "threads": 1, "warmup_seconds": 0.05, "min_window_seconds": 0.3, "min_passes": 3, "rounds": 2,
        "max_gap_seconds": 0.0, "reference": "configured (evaluation)",
    }  # fmt: skip
    threads = torch.get_num_threads()
    with EnergyMeter("test", EstimateModel()) as meter:
        bf16 = evaluate(model, arrays, tmp_path / "model.pt", settings, meter, precision="bf16")
    assert bf16["inference_precision"] == "bf16"  # evaluated under bf16 autocast, as trained
    assert torch.get_num_threads() == threads  # the protocol's thread count is not left behind
