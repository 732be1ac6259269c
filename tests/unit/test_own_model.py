"""Your own model: any torchvision classifier, pretrained fine-tuning (frozen or not), clear errors."""

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import validate
from torchvision.models import get_model

from conftest import ROOT, artifact, run_snakemake, tiny_config
from joulebench import store
from joulebench.config import ConfigError, check_config, resolved_config
from joulebench.models import ModelError, SmallCNN, build_model, freeze_pretrained, save_model
from joulebench.saved import load_model
from joulebench.train.pretrained import cache_path, load_weights, locate_weights, torchvision_weights

# A torchvision model outside small_cnn/resnet18/mobilenet_v3_small that trains in seconds on 8x8.
OTHER_MODEL = "shufflenet_v2_x0_5"


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def digits_config(models, variants) -> dict:
    config = tiny_config(models=models, variants=variants)
    config["report"] = {}
    return config


# ------------------------------------------------------------------------------- unit: models


def test_pretrained_weights_load_then_the_head_and_stem_adapt(tmp_path):
    torch.manual_seed(0)
    source = get_model(OTHER_MODEL)
    recipe = {"arch": OTHER_MODEL, "in_channels": 1, "num_classes": 10, "image_size": [8, 8]}
    state_dict = source.state_dict()
    model = build_model(recipe, state_dict)
    assert model.fc.out_features == 10 and model.conv1[0].in_channels == 1
    assert model.conv1[0].stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    assert torch.equal(model.stage2[0].branch1[0].weight, state_dict["stage2.0.branch1.0.weight"])
    # A grey image gives the first layer the response the RGB filters give to grey replicated to RGB.
    grey = torch.rand(1, 1, 8, 8)
    expected = torch.nn.functional.conv2d(grey.expand(1, 3, 8, 8), source.conv1[0].weight, padding=1)
    assert torch.allclose(model.conv1[0](grey), expected, atol=1e-5)
    trainable = freeze_pretrained(model, state_dict)
    assert trainable == ["conv1.0.weight", "fc.weight", "fc.bias"]
    # A saved fine-tune reloads from its own files: the recipe never needs the weights again.
    save_model(model, {**recipe, "pretrained": {"path": "gone.pt"}}, *artifact(tmp_path))
    loaded, _ = load_model(*artifact(tmp_path))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_file_of_another_model_lists_the_mismatch(tmp_path):
    path = save_state_dict(SmallCNN(1, 10, width=8), tmp_path / "narrow.pt")
    state_dict, provenance = load_weights("small_cnn", str(path))
    assert provenance["source"] == "file" and len(provenance["sha256"]) == 64
    recipe = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "pretrained": {"path": str(path)}}
    with pytest.raises(ModelError, match=r"narrow.pt does not match model small_cnn: wrong shape \(\d+\)"):
        build_model(recipe, state_dict)
    with pytest.raises(ModelError, match=r"does not match model mnasnet0_5: missing \(\d+\): layers"):
        build_model({**recipe, "arch": "mnasnet0_5"}, state_dict)


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights file .*broken.pt"):
        load_weights("resnet18", str(path))
    with pytest.raises(ModelError, match="'missing.pt' of model resnet18: no such file nor a weights name"):
        load_weights("resnet18", "missing.pt")


def test_torchvision_weights_come_from_the_cache_or_name_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision_weights("resnet18", "DEFAULT")
    assert weights is torchvision_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ModelError, match=f"not in the local cache: put {weights.url} at {tmp_path}/hub"):
        locate_weights("resnet18", "DEFAULT")
    assert locate_weights("resnet18", "DEFAULT", download=True) == ("torchvision", weights)
    cache_path(weights).parent.mkdir(parents=True)
    cache_path(weights).touch()
    assert locate_weights("resnet18", "IMAGENET1K_V1") == ("torchvision", weights)
    with pytest.raises(ModelError, match="not weights of model resnet18; ResNet18_Weights has DEFAULT"):
        torchvision_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V2")


# ------------------------------------------------------------------------------- unit: config


def check(config: dict) -> None:
    validate(config, schema=str(ROOT / "workflow/schemas/config.schema.yaml"))
    check_config(resolved_config(config))


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (["resnet19"], "unknown model 'resnet19': not small_cnn nor .*; closest names: resnet18"),
        (["vit_b_16"], r"model vit_b_16 cannot take 1x8x8 input \(Wrong image height! Expected 224"),
        (["squeezenet1_0"], "squeezenet1_0 has no linear classification head"),
        (["small_cnn", {"name": "small_cnn"}], "models: small_cnn is listed twice"),
        ([{"name": "small_cnn", "weights": "nowhere.pt"}], "'nowhere.pt' of model small_cnn: no such file"),
    ],
)
def test_bad_models_are_named_with_what_to_do(models, message):
    with pytest.raises(ConfigError, match=message):
        check(digits_config(models, {}))


def test_a_weights_file_of_another_model_stops_the_config(tmp_path):
    path = save_state_dict(get_model(OTHER_MODEL), tmp_path / "shufflenet.pt")
    config = digits_config([{"name": "mnasnet0_5", "weights": str(path)}], {"ft": {"technique": "finetune"}})
    with pytest.raises(ConfigError, match=r"shufflenet.pt does not match model mnasnet0_5: missing"):
        check(config)


def test_a_finetune_needs_weights_for_every_model():
    config = digits_config(["small_cnn"], {"ft": {"technique": "finetune"}})
    with pytest.raises(ConfigError, match="small_cnn has no weights, but variant ft fine-tunes"):
        check(config)


def test_paper_scale_config_is_valid(tmp_path, monkeypatch):
    config = yaml.safe_load((ROOT / "config/cifar10-resnet18.yaml").read_text())
    assert config["dataset"] == {**config["dataset"], "name": "CIFAR10", "source": "torchvision"}
    assert any(v["technique"] == "finetune" for v in config["variants"].values())
    # Its fine-tune reads ImageNet weights from the cache: without them it says where they go.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="resnet18 are not in the local cache"):
        check(copy.deepcopy(config))
    path = cache_path(torchvision_weights("resnet18", config["models"][0]["weights"]))
    path.parent.mkdir(parents=True)
    path.touch()
    check(config)


# ------------------------------------------------------------------------------- workflow runs


def test_bad_model_name_stops_the_workflow_before_any_job(tmp_path):
    result = run_snakemake(tmp_path, digits_config(["small_cnn", "mobilenet_v3_smal"], {}), check=False)
    assert result.returncode != 0
    assert "closest names: mobilenet_v3_small" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # a real run with a torchvision model: ~50 s
def test_pretrained_finetunes_and_a_new_architecture_run_end_to_end(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(1)
    # ImageNet-shaped torchvision weights (3 channels, 1000 classes, full stem), made here; one
    # model keeps the run short (a finetune variant needs weights for every model).
    files = {OTHER_MODEL: save_state_dict(get_model(OTHER_MODEL), weights / f"{OTHER_MODEL}.pt")}
    models = [{"name": name, "weights": str(path)} for name, path in files.items()]
    variants = {
        "finetune": {"technique": "finetune"},
        "finetune_frozen": {"technique": "finetune", "freeze_backbone": True},
    }
    workdir = tmp_path / "run"
    config = digits_config(models, variants)
    config["training"]["epochs"] = 5  # one epoch leaves a ShuffleNet from scratch at chance
    run_snakemake(workdir, config)

    table = pd.read_csv(workdir / "results/report/results.csv")
    rows = set(zip(table["model"], table["variant"], table["technique"], strict=True))
    for name in files:
        assert {(name, "baseline", "baseline"), (name, "finetune", "finetune")} <= rows
        assert (name, "finetune_frozen", "finetune") in rows
    assert "excludes the pretraining" in (workdir / "results/report/summary.md").read_text()
    scratch = table[table["variant"] == "baseline"]
    assert (scratch["test_accuracy"] > 0.3).all(), scratch["test_accuracy"]

    for name, path in files.items():
        for variant in variants:
            directory = workdir / f"results/models/digits/{name}/{variant}/seed0"
            pretrained = store.read_json(directory / "training.json")["pretrained"]
            assert pretrained["path"] == str(path) and pretrained["source"] == "file"
            assert store.read_json(directory / "model.json")["pretrained"]["sha256"] == pretrained["sha256"]
        source = torch.load(path, weights_only=True)
        path.unlink()  # a fine-tuned model reloads from its own files
        frozen, recipe = load_model(
            *artifact(workdir / f"results/models/digits/{name}/finetune_frozen/seed0")
        )
        tuned, _ = load_model(*artifact(workdir / f"results/models/digits/{name}/finetune/seed0"))
        trainable = set(recipe["pretrained"]["trainable_parameters"])
        backbone = [key for key, _ in frozen.named_parameters() if key not in trainable]
        assert backbone and all(torch.equal(frozen.state_dict()[key], source[key]) for key in backbone)
        assert not all(torch.equal(tuned.state_dict()[key], source[key]) for key in backbone)
