import pytest
import torch

from joulebench.models import ARCHITECTURES, build_model, load_model, save_model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 8, 10), (3, 32, 100)])
def test_every_architecture_takes_small_inputs_of_any_channels_and_classes(arch, channels, size, classes):
    model = build_model({"arch": arch, "in_channels": channels, "num_classes": classes}).eval()
    with torch.no_grad():
        assert model(torch.rand(2, channels, size, size)).shape == (2, classes)


def test_mobilenet_width_scales_and_resnet18_refuses_a_width():
    narrow = build_model({"arch": "mobilenet_v3_small", "in_channels": 1, "num_classes": 10, "width": 8})
    full = build_model({"arch": "mobilenet_v3_small", "in_channels": 1, "num_classes": 10})
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 2
    with pytest.raises(ValueError, match="student_arch"):
        build_model({"arch": "resnet18", "in_channels": 1, "num_classes": 10, "width": 8})


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match="small_cnn"):
        build_model({"arch": "vgg11", "in_channels": 1, "num_classes": 10})


def test_saved_model_reloads_with_the_same_weights_and_recipe(tmp_path):
    recipe = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "width": 4, "precision": "fp32"}
    model = build_model(recipe)
    save_model(model, recipe, tmp_path)
    loaded, loaded_recipe = load_model(tmp_path)
    assert loaded_recipe == recipe
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
