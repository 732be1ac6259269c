import pytest
import torch

from conftest import artifact
from joulebench.models import ModelError, build_model, save_model

# Ours, the two torchvision models the project started with, and others that take 8x8 input.
from joulebench.saved import load_model

SMALL_INPUT_MODELS = ["small_cnn", "resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0"]


@pytest.mark.parametrize("arch", SMALL_INPUT_MODELS)
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 8, 10), (3, 32, 100)])
def test_every_architecture_takes_small_inputs_of_any_channels_and_classes(arch, channels, size, classes):
    model = build_model({"arch": arch, "in_channels": channels, "num_classes": classes}).eval()
    with torch.no_grad():
        assert model(torch.rand(2, channels, size, size)).shape == (2, classes)


def test_mobilenet_width_scales_and_resnet18_refuses_a_width():
    narrow = build_model({"arch": "mobilenet_v3_small", "in_channels": 1, "num_classes": 10, "width": 8})
    full = build_model({"arch": "mobilenet_v3_small", "in_channels": 1, "num_classes": 10})
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 2
    with pytest.raises(ModelError, match="resnet18 has a fixed width .* set student_arch"):
        build_model({"arch": "resnet18", "in_channels": 1, "num_classes": 10, "width": 8})


def test_unknown_architecture_names_the_closest_ones():
    with pytest.raises(ModelError, match="unknown model 'vgg99'.* closest names: vgg19"):
        build_model({"arch": "vgg99", "in_channels": 1, "num_classes": 10})


def test_large_images_keep_the_torchvision_stem_small_images_get_stride_one():
    large = build_model({"arch": "resnet18", "in_channels": 3, "num_classes": 10, "image_size": [224, 224]})
    small = build_model({"arch": "resnet18", "in_channels": 3, "num_classes": 10, "image_size": [32, 32]})
    assert large.conv1.stride == (2, 2) and isinstance(large.maxpool, torch.nn.MaxPool2d)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)


def test_saved_model_reloads_with_the_same_weights_and_recipe(tmp_path):
    recipe = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "width": 4, "precision": "fp32"}
    model = build_model(recipe)
    save_model(model, recipe, *artifact(tmp_path))
    loaded, loaded_recipe = load_model(*artifact(tmp_path))
    assert loaded_recipe == recipe
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
