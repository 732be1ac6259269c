"""Each technique changes the model the way it claims, and artifacts round-trip with weights_only."""

import copy

import pytest
import torch
from torch import nn

from joulebench import compress
from joulebench.models import build_model, count_parameters, load_model, save_model

RECIPE = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10}


def small_model():
    torch.manual_seed(0)
    return build_model(RECIPE).eval()


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_global_magnitude_pruning_reaches_sparsity_and_is_permanent(sparsity):
    model = compress.global_magnitude_prune(small_model(), sparsity)
    compress.make_pruning_permanent(model)
    assert compress.weight_sparsity(model) == pytest.approx(sparsity, abs=1e-3)
    assert not any(torch.nn.utils.prune.is_pruned(m) for m in model.modules())
    # Global ranking: the smallest surviving weight is at least the largest pruned one.
    assert all("weight_orig" not in name for name, _ in model.named_parameters())


def test_pruned_weights_stay_zero_through_fine_tuning():
    model = compress.global_magnitude_prune(small_model().train(), 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(8, 1, 8, 8)).sum()
    loss.backward()
    optimizer.step()
    compress.make_pruning_permanent(model)
    assert compress.weight_sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_int8_dynamic_quantizes_every_linear_layer_and_keeps_outputs():
    model = small_model()
    reference = copy.deepcopy(model)
    quantized = compress.apply_quantization(model, "int8_dynamic")
    linears = sum(isinstance(m, nn.Linear) for m in quantized.modules())
    assert compress.int8_linear_count(quantized) == linears == 2
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(quantized(x), reference(x), atol=0.05)


def test_student_is_smaller():
    teacher_params, _ = count_parameters(build_model(RECIPE))
    student_params, _ = count_parameters(build_model({**RECIPE, "width": 8}))
    assert student_params < teacher_params / 3


def test_quantized_artifact_round_trips_with_weights_only(tmp_path):
    quantized = compress.apply_quantization(small_model(), "int8_dynamic")
    save_model(quantized, {**RECIPE, "quantization": "int8_dynamic"}, tmp_path)
    loaded, recipe = load_model(tmp_path)
    assert recipe["quantization"] == "int8_dynamic"
    assert compress.int8_linear_count(loaded) == 2
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    # Smaller on disk than the float artifact.
    float_dir = tmp_path / "float"
    save_model(small_model(), RECIPE, float_dir)
    assert (tmp_path / "model.pt").stat().st_size < 0.5 * (float_dir / "model.pt").stat().st_size


def test_loader_resizes_layers_to_saved_shapes(tmp_path):
    # A narrower model saved under the default recipe: shapes come from the tensors (structured pruning).
    narrow = build_model({**RECIPE, "width": 12}).eval()
    save_model(narrow, RECIPE, tmp_path)
    loaded, _ = load_model(tmp_path)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), narrow(x))


def test_foreign_pickle_is_refused(tmp_path):
    save_model(small_model(), RECIPE, tmp_path)
    torch.save({"evil": object()}, tmp_path / "model.pt")  # needs pickle of an arbitrary class
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_model(tmp_path)
