"""Albumentations pipelines from config: checked before any job, applied online, materialized offline."""

import numpy as np
import pytest
from PIL import Image

from conftest import run_snakemake, tiny_config
from joulebench.config import ConfigError, check_config, resolved_config
from joulebench.data import augment, loader

SHIFT = [{"name": "Affine", "params": {"translate_px": [-1, 1], "p": 1.0}}]


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        (
            [{"name": "HorizontalFlipp"}],
            r"transforms\[0\]\.name: 'HorizontalFlipp' .*did you mean HorizontalFlip",
        ),
        ([{"name": "Compose"}], r"transforms\[0\]\.name: 'Compose' is not an albumentations"),
        (
            [{"name": "HorizontalFlip", "params": {"p": 2}}],
            r"transforms\[0\]\.params: HorizontalFlip rejects",
        ),
        (
            [{"name": "HorizontalFlip"}, {"name": "Affine", "params": {"shift": 3}}],
            r"transforms\[1\]\.params: .*'shift' are not valid",
        ),
    ],
)
def test_bad_transforms_are_config_errors_naming_the_key(transforms, message):
    config = tiny_config(augmentation={"transforms": transforms})
    with pytest.raises(ConfigError, match=message):
        check_config(resolved_config(config))


@pytest.mark.parametrize(
    ("transform", "why"),
    [
        ({"name": "HueSaturationValue", "params": {"p": 1.0}}, "not applicable to grayscale"),
        ({"name": "RandomCrop", "params": {"height": 16, "width": 16}}, "exceeds image dimensions"),
    ],
)
def test_a_transform_that_cannot_work_on_8x8_grey_digits_fails_at_config_time(transform, why):
    config = tiny_config(augmentation={"transforms": [transform]})
    with pytest.raises(ConfigError, match=rf"fails on a \(1, 8, 8\) .*{why}"):
        check_config(resolved_config(config))


def test_online_augmentation_changes_training_batches_only(digits_arrays):
    arrays, _ = digits_arrays
    plain = next(iter(loader.loader(arrays, "train", 32, shuffle=True, seed=0)))
    shifted = next(iter(loader.loader(arrays, "train", 32, shuffle=True, seed=0, augment=SHIFT)))
    again = next(iter(loader.loader(arrays, "train", 32, shuffle=True, seed=0, augment=SHIFT)))
    assert plain[0].shape == shifted[0].shape and plain[0].dtype == shifted[0].dtype
    assert np.array_equal(plain[1], shifted[1])  # same images drawn, same labels
    assert not np.array_equal(plain[0], shifted[0])
    assert np.array_equal(shifted[0], again[0])  # seeded: repeatable
    assert float(shifted[0].min()) >= 0.0 and float(shifted[0].max()) <= 1.0


def test_training_runs_with_augmentation(digits_arrays):
    from joulebench.devices import CPU
    from joulebench.models import build_model
    from joulebench.train.loop import TrainSettings, train

    class NoMeter:
        placement = CPU

        def window(self, name):
            from contextlib import nullcontext

            return nullcontext(type("W", (), {"record": {"joules": 0.0, "source": "none"}})())

    arrays, _ = digits_arrays
    model = build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "precision": "fp32"})
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.003, augmentation=tuple(SHIFT))
    history = train(model, arrays, settings, NoMeter())
    assert history[0]["val_accuracy"] > 0.3


def test_materialize_appends_augmented_copies(digits_arrays):
    arrays, _ = digits_arrays
    out = augment.materialize(arrays, SHIFT, copies=2, seed=0)
    n = len(arrays["train_y"])
    assert out["train_x"].shape == (3 * n, 1, 8, 8)
    assert np.array_equal(out["train_x"][:n], arrays["train_x"])
    assert not np.array_equal(out["train_x"][n : 2 * n], arrays["train_x"])
    assert np.array_equal(out["train_y"], np.tile(arrays["train_y"], 3))
    assert np.array_equal(out["test_x"], arrays["test_x"])


def test_figure_of_augmented_samples(tmp_path, digits_arrays):
    arrays, _ = digits_arrays
    path = tmp_path / "augmentation.png"
    augment.plot_samples(arrays["train_x"][:3], SHIFT, seed=0, path=path)
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 150


@pytest.mark.slow
def test_augmentation_typo_stops_the_workflow_before_any_job(tmp_path):
    config = tiny_config(augmentation={"transforms": [{"name": "RandomCropp", "params": {}}]})
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0
    assert "augmentation.transforms[0].name: 'RandomCropp'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
