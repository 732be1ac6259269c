"""The evaluation rule's metrics: MACs as torchvision documents them, and sane latency/size fields."""

import pytest
import torch
import torchvision

from conftest import artifact
from joulebench.energy.estimate import EstimateModel
from joulebench.energy.meter import EnergyMeter
from joulebench.evaluate.metrics import count_macs, evaluate, parameter_counts, percentile
from joulebench.models import build_model, save_model

# One model per torchvision family we claim (each instantiates in well under a second).
MACS_FAMILIES = [
    "resnet18",  # resnet
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
    "efficientnet_v2_s",  # documented at its 384x384 crop
    "regnet_y_400mf",
    "densenet121",
    "convnext_tiny",
    "squeezenet1_0",
    "googlenet",
    "inception_v3",  # 299x299
    "alexnet",
    "vgg11",
    "vit_b_16",  # nn.MultiheadAttention: its fused inference path
    "swin_t",  # explicit matmul attention
    "swin_v2_t",  # 256x256
    "maxvit_t",
]


def documented_gmacs(name: str) -> tuple[float, int]:
    """torchvision's documented "GFLOPS" (really GMACs, meta["_ops"]) and the crop they are for."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return weights.meta["_ops"], weights.transforms().crop_size[0]


@pytest.mark.parametrize("name", MACS_FAMILIES)
def test_counted_macs_match_torchvision_documentation(name):
    documented, crop = documented_gmacs(name)
    assert crop == {"efficientnet_v2_s": 384, "inception_v3": 299, "swin_v2_t": 256}.get(name, 224)
    # googlenet's parameters are documented without its auxiliary classifiers (inception_v3's with).
    auxiliary = {"aux_logits": False} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, **auxiliary).eval()
    counted = count_macs(model, torch.rand(1, 3, crop, crop)) / 1e9
    # Within 1%, or within the rounding of the documented figure (3 decimals: 0.040 for 0.0405).
    assert counted == pytest.approx(documented, rel=0.01, abs=0.0005)
    params, _ = parameter_counts(model)
    assert params == torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


def test_attention_counts_the_same_on_fused_and_unfused_paths():
    # Eval mode takes nn.MultiheadAttention's fused fast path (torch._native_multi_head_attention),
    # training mode scaled_dot_product_attention: both are counted, and equal.
    model = torchvision.models.get_model("vit_b_16")
    example = torch.rand(1, 3, 224, 224)
    assert count_macs(model.eval(), example) == count_macs(model.train(), example)
    query = torch.rand(2, 4, 10, 8)
    attention = torch.nn.functional.scaled_dot_product_attention
    assert count_macs(lambda q: attention(q, q, q), query) == 2 * 2 * 4 * 10 * 10 * 8


def test_percentile_is_inclusive():
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 95) == pytest.approx(95.05)


def test_evaluate_reports_every_metric(tmp_path, digits_arrays):
    arrays, _ = digits_arrays
    recipe = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10}
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    save_model(model, recipe, *artifact(tmp_path))
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
