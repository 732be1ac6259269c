"""Each technique changes the model the way it claims, and artifacts round-trip without pickle."""

import copy
import zipfile

import pytest
import torch
import yaml
from torch import nn

from conftest import ROOT, artifact
from joulebench.compress import apply, prune, quantize
from joulebench.config import resolved_config
from joulebench.energy.estimate import EstimateModel
from joulebench.energy.meter import EnergyMeter
from joulebench.evaluate.accuracy import accuracy
from joulebench.evaluate.metrics import count_macs, parameter_counts
from joulebench.models import build_model, count_parameters, save_model
from joulebench.saved import load_model
from joulebench.train.loop import TrainSettings, seed_everything, train

RECIPE = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10}


def small_model():
    torch.manual_seed(0)
    return build_model(RECIPE).eval()


def meter():
    return EnergyMeter("test", EstimateModel())


# -- unstructured pruning ----------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_global_magnitude_pruning_reaches_sparsity_and_is_permanent(sparsity):
    model = small_model()
    weights = torch.cat([m.weight.detach().abs().flatten() for m, _ in prune.prunable_weights(model)])
    prune.make_pruning_permanent(prune.global_magnitude_prune(model, sparsity))
    assert prune.weight_sparsity(model) == pytest.approx(sparsity, abs=1e-3)
    assert not any(torch.nn.utils.prune.is_pruned(m) for m in model.modules())
    assert all("weight_orig" not in name for name, _ in model.named_parameters())
    # Global ranking: every surviving weight is at least as large as the largest pruned one.
    kept = torch.cat([m.weight.detach().abs().flatten() for m, _ in prune.prunable_weights(model)])
    threshold = weights.sort().values[int(sparsity * len(weights)) - 1]
    assert kept[kept > 0].min() >= threshold


@pytest.mark.parametrize("steps", [2, 3])
def test_iterative_schedule_reaches_the_same_sparsity(steps):
    model = small_model()
    amounts = prune.step_amounts(0.9, steps)
    for amount in amounts:
        prune.global_magnitude_prune(model, amount)
    prune.make_pruning_permanent(model)
    assert len(amounts) == steps
    assert prune.weight_sparsity(model) == pytest.approx(0.9, abs=2e-3)


def test_a_pruning_step_after_a_device_move_prunes_the_weights_where_they_now_are():
    # A fine-tune on a GPU leaves each pruned module's plain `weight` attribute (set by torch's
    # pruning hook at every forward) on the GPU; model.cpu() moves weight_orig and weight_mask
    # only. Here 'meta' stands in for the GPU, the one other device torch has on every host.
    moved, reference = small_model(), small_model()
    first, second = prune.step_amounts(0.8, 2)
    for model in (moved, reference):
        prune.global_magnitude_prune(model, first)
    for module, name in prune.prunable_weights(moved):
        setattr(module, name, getattr(module, name).to("meta"))  # the stale attribute
    for model in (moved, reference):
        prune.global_magnitude_prune(model, second)
    for (module, name), (same, _) in zip(
        prune.prunable_weights(moved), prune.prunable_weights(reference), strict=True
    ):
        assert getattr(module, name).device == module.weight_orig.device == module.weight_mask.device
        assert torch.equal(module.weight_mask, same.weight_mask)
    assert prune.weight_sparsity(moved) == pytest.approx(0.8, abs=2e-3)


def test_a_pruning_step_ranks_the_weights_as_trained_since_the_last_forward_pass():
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 9.0))
    model = nn.Sequential(layer)
    prune.global_magnitude_prune(model, 0.25)  # 1 and 2 go
    with torch.no_grad():  # an optimizer step: the surviving magnitudes now run the other way
        layer.weight_orig.copy_(torch.tensor([0.0, 0.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0]))
    prune.global_magnitude_prune(model, 2 / 6)  # the two smallest of today's weights: 4 and 3
    assert layer.weight_mask.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]]


def test_pruned_weights_stay_zero_through_fine_tuning():
    model = prune.global_magnitude_prune(small_model().train(), 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 1, 8, 8)).sum().backward()
    optimizer.step()
    prune.make_pruning_permanent(model)
    assert prune.weight_sparsity(model) == pytest.approx(0.8, abs=1e-3)


# -- structured (channel) pruning --------------------------------------------------------------

ARCH_INPUTS = [("small_cnn", 1, 8), ("resnet18", 3, 16), ("mobilenet_v3_small", 3, 16)]


@pytest.mark.parametrize(("arch", "channels", "size"), ARCH_INPUTS)
def test_channel_pruning_removes_channels_and_reloads(tmp_path, arch, channels, size):
    recipe = {"arch": arch, "in_channels": channels, "num_classes": 10}
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    example = torch.rand(2, channels, size, size)
    before_channels = prune.channel_counts(model)
    before_params, _ = count_parameters(model)
    before_macs = count_macs(model, example[:1])
    prune.channel_prune(model, 0.5, example)
    after = prune.channel_counts(model)
    output_name = next(n for n, m in model.named_modules() if m is prune.output_layer(model))
    assert after[output_name] == before_channels[output_name] == 10  # classes kept
    shrunk = [name for name in after if after[name] < before_channels[name]]
    assert len(shrunk) >= len(after) // 2, "most layers lose channels"
    params, _ = count_parameters(model)
    assert params < 0.45 * before_params  # ~quarter: both in and out channels halve
    assert count_macs(model, example[:1]) < 0.45 * before_macs
    save_model(model, recipe, *artifact(tmp_path))
    loaded, _ = load_model(*artifact(tmp_path))
    with torch.no_grad():
        assert torch.equal(loaded(example), model(example))


def test_loader_resizes_layers_to_saved_shapes(tmp_path):
    narrow = build_model({**RECIPE, "width": 12}).eval()
    save_model(narrow, RECIPE, *artifact(tmp_path))
    loaded, _ = load_model(*artifact(tmp_path))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), narrow(x))


# -- quantization ------------------------------------------------------------------------------


def test_int8_dynamic_quantizes_every_linear_layer_and_keeps_outputs():
    model = small_model()
    reference = copy.deepcopy(model)
    quantized = quantize.dynamic_int8(model)
    assert quantize.int8_linear_count(quantized) == 2
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(quantized(x), reference(x), atol=0.05)


def test_int8_dynamic_artifact_round_trips_with_weights_only(tmp_path):
    quantized = quantize.dynamic_int8(small_model())
    save_model(quantized, {**RECIPE, "quantization": "int8_dynamic"}, *artifact(tmp_path))
    loaded, recipe = load_model(*artifact(tmp_path))
    assert recipe["quantization"] == "int8_dynamic" and quantize.int8_linear_count(loaded) == 2
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    float_dir = tmp_path / "float"
    save_model(small_model(), RECIPE, *artifact(float_dir))
    assert (tmp_path / "model.pt").stat().st_size < 0.5 * (float_dir / "model.pt").stat().st_size
    # int8 matrix products count as the float ones they replace.
    assert count_macs(loaded, x[:1]) == count_macs(small_model(), x[:1])


@pytest.fixture(scope="module")
def static_artifact(tmp_path_factory, digits_arrays_module):
    """small_cnn trained briefly, statically quantized on 4 calibration batches, saved and reloaded."""
    arrays = digits_arrays_module
    model = small_model()
    train(model, arrays, TrainSettings(epochs=1, batch_size=64, lr=0.003), meter())
    directory = tmp_path_factory.mktemp("static")
    converted, _, _ = apply.apply_quantization(
        copy.deepcopy(model),
        {"method": "int8_static", "calibration_batches": 4},
        arrays,
        TrainSettings(epochs=1, batch_size=64, lr=0.003),
        meter(),
    )
    apply.save_quantized(converted, {**RECIPE, "quantization": "int8_static"}, arrays, *artifact(directory))
    save_model(model, RECIPE, *artifact(directory / "float"))
    return model.eval(), directory, arrays


@pytest.fixture(scope="module")
def digits_arrays_module():
    from joulebench.data import sources, splits

    images, labels, _ = sources.load_digits_source()
    return splits.split_arrays(images, labels, 0.15, 0.2, seed=0)


def test_int8_static_runs_int8_kernels_and_keeps_accuracy(static_artifact):
    model, directory, arrays = static_artifact
    lowered, recipe = load_model(*artifact(directory))
    assert recipe["format"] == "torch.export"
    kernels = quantize.int8_kernel_ops(lowered)
    assert kernels.count("onednn.qconv_pointwise.default") == 2
    assert kernels.count("onednn.qlinear_pointwise.default") == 2
    assert not any(n.target == torch.ops.aten.convolution.default for n in lowered.graph.nodes)
    assert accuracy(lowered, arrays, "test") >= accuracy(model, arrays, "test") - 0.02
    # Batch size stays dynamic: batch 1 (latency) and a full batch (accuracy) both run.
    with torch.no_grad():
        assert lowered(torch.rand(1, 1, 8, 8)).shape == (1, 10)


def test_int8_static_artifact_is_int8_pickle_free_and_small(static_artifact):
    model, directory, _ = static_artifact
    artifact = directory / "model.pt"
    assert quantize._pickled_payloads(artifact) == []
    with zipfile.ZipFile(artifact) as archive:
        assert any(name.endswith("model.json") for name in archive.namelist())
    reference, _ = quantize.load_reference(artifact)
    int8 = [b for b in reference.buffers() if b.dtype is torch.int8]
    assert sum(b.numel() for b in int8) == sum(m.weight.numel() for m, _ in prune.prunable_weights(model))
    assert artifact.stat().st_size < 0.5 * (directory / "float" / "model.pt").stat().st_size
    params, _ = parameter_counts(reference)
    float_params, _ = count_parameters(model)
    assert 0.99 * float_params < params <= float_params  # batch norm folded into the convs
    assert count_macs(reference, torch.rand(1, 1, 8, 8)) == count_macs(model, torch.rand(1, 1, 8, 8))


def test_archive_with_pickled_payload_is_refused(static_artifact, tmp_path):
    _, directory, _ = static_artifact
    forged = tmp_path / "model.pt"
    with zipfile.ZipFile(directory / "model.pt") as source, zipfile.ZipFile(forged, "w") as target:
        for item in source.infolist():
            payload = source.read(item)
            if item.filename.endswith("model_weights_config.json"):
                payload = payload.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            target.writestr(item, payload)
    with pytest.raises(ValueError, match="pickled entries"):
        quantize.load_reference(forged)


@pytest.mark.slow  # one epoch of fake-quantized training: 40 s idle, minutes under load
def test_qat_trains_fake_quantized_graph_then_converts_to_int8(digits_arrays_module):
    arrays = digits_arrays_module
    seed_everything(0)
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.003)
    converted, history, _ = apply.apply_quantization(
        small_model(), {"method": "int8_qat", "finetune_epochs": 1}, arrays, settings, meter()
    )
    assert len(history) == 1 and history[0]["val_accuracy"] > 0.5
    fake_quant = [n for n in converted.graph.nodes if "quantize_per" in str(n.target)]
    assert fake_quant, "converted graph has quantize/dequantize nodes"
    lowered = quantize.lower_to_x86(converted, torch.rand(2, 1, 8, 8))
    assert len(quantize.int8_kernel_ops(lowered)) == 4


def test_foreign_pickle_is_refused(tmp_path):
    save_model(small_model(), RECIPE, *artifact(tmp_path))
    torch.save({"evil": nn.Module()}, tmp_path / "model.pt")  # needs pickle of an arbitrary class
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_model(*artifact(tmp_path))


def test_student_is_smaller():
    teacher_params, _ = count_parameters(build_model(RECIPE))
    student_params, _ = count_parameters(build_model({**RECIPE, "width": 8}))
    assert student_params < teacher_params / 3


def test_default_config_shows_each_technique_and_a_chain():
    variants = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["variants"]
    methods = {(v["technique"], v.get("method")) for v in variants.values()}
    assert {("prune", None), ("prune", "channel"), ("quantize", "int8_dynamic")} <= methods
    assert ("quantize", "int8_qat") in methods  # PT2E int8, via the channels50 -> QAT chain
    assert any(
        v["technique"] == "quantize" and v.get("from", "baseline") != "baseline" for v in variants.values()
    )


# -- accuracy after fine-tuning ----------------------------------------------------------------

# Largest test-accuracy drop (fraction) of a fine-tuned compressed default variant below its baseline.
ACCURACY_TOLERANCE = 0.05


@pytest.mark.slow
def test_every_default_variant_stays_within_tolerance_of_the_baseline(digits_arrays_module):
    """Baseline trained for 4 epochs; each compression variant of the default config from it."""
    config = resolved_config()  # the shipped config, as the rules see it
    tolerance = ACCURACY_TOLERANCE
    arrays = digits_arrays_module
    seed_everything(0)
    baseline = small_model()
    train(baseline, arrays, TrainSettings(epochs=4, batch_size=64, lr=0.003), meter())
    baseline_accuracy = accuracy(baseline.eval(), arrays, "test")
    assert baseline_accuracy > 0.9
    made = {"baseline": baseline}
    for name, variant in config["variants"].items():
        if variant["technique"] not in ("prune", "quantize"):
            continue
        parent = made[variant.get("from", "baseline")]
        settings = TrainSettings(epochs=variant.get("finetune_epochs", 1), batch_size=64, lr=0.003)
        step = apply.apply_pruning if variant["technique"] == "prune" else apply.apply_quantization
        model, _, _ = step(copy.deepcopy(parent), variant, arrays, settings, meter())
        made[name] = model
        runnable = model
        if isinstance(model, torch.fx.GraphModule):
            runnable = quantize._with_train_eval(quantize.lower_to_x86(model, torch.rand(2, 1, 8, 8)))
        variant_accuracy = accuracy(runnable, arrays, "test")
        assert variant_accuracy >= baseline_accuracy - tolerance, (name, variant_accuracy, baseline_accuracy)


def test_int8_static_quantizes_resnet18_with_reused_relu_modules():
    # torchvision's BasicBlock calls one ReLU module twice; every conv and the classifier go int8.
    torch.manual_seed(0)
    model = build_model({"arch": "resnet18", "in_channels": 3, "num_classes": 10}).eval()
    example = torch.rand(2, 3, 16, 16)
    converted = quantize.static_int8(model, [torch.rand(8, 3, 16, 16)])
    lowered = quantize.lower_to_x86(converted, example)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(quantize.int8_kernel_ops(lowered)) == convs + 1
    with torch.no_grad():
        assert torch.allclose(lowered(example), model(example), atol=0.05)


def test_multi_step_pruning_history_accumulates_across_steps(digits_arrays):
    # Each step's fine-tune restarted cumulative_joules and cumulative_seconds at zero.
    arrays, _ = digits_arrays
    settings = TrainSettings(epochs=1, batch_size=128, lr=0.003)
    with meter() as rule_meter:
        _, history, _ = apply.apply_pruning(
            small_model(), {"method": "magnitude", "sparsity": 0.8, "steps": 2}, arrays, settings, rule_meter
        )
    assert [row["prune_step"] for row in history] == [1, 2]
    assert history[1]["cumulative_joules"] == pytest.approx(history[0]["joules"] + history[1]["joules"])
    assert history[1]["cumulative_seconds"] == pytest.approx(history[0]["seconds"] + history[1]["seconds"])
