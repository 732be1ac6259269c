"""Datasets as arrays: load a source, split it with a fixed seed, hand out tensors.

A prepared dataset is one .npz of float32 images (N, C, H, W) in [0, 1] and int64 labels per
split, plus a JSON of facts (classes, shape, counts). Every later rule reads only that file.
"""

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TORCHVISION_SOURCES = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "SVHN")


class DatasetError(ValueError):
    """A dataset that cannot be used, with what was expected."""


def load_digits_source() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's digits: 1,797 real 8x8 grey images of handwritten digits, 16 grey levels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    return images, digits.target.astype(np.int64), [str(c) for c in digits.target_names]


def _pil_to_array(image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def load_torchvision_source(name: str, root: str, download: bool):
    """A torchvision dataset from a local root; train and test parts are pooled, then re-split."""
    import torchvision.datasets as tvd

    if name not in TORCHVISION_SOURCES:
        raise DatasetError(f"unknown torchvision dataset {name!r}; choose one of {TORCHVISION_SOURCES}")
    if not Path(root).is_dir() and not download:
        raise DatasetError(
            f"dataset root {root!r} does not exist; put the {name} files there or set dataset.download: true"
        )
    cls = getattr(tvd, name)
    parts = []
    for train in (True, False):
        kwargs = {"split": "train" if train else "test"} if name == "SVHN" else {"train": train}
        try:
            parts.append(cls(root=root, download=download, **kwargs))
        except RuntimeError as err:
            raise DatasetError(f"could not read {name} under {root!r}: {err}") from err
    images, labels = [], []
    for part in parts:
        for image, label in part:
            images.append(_pil_to_array(image))
            labels.append(label)
    classes = [str(c) for c in getattr(parts[0], "classes", sorted(set(labels)))]
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def load_imagefolder_source(root: str):
    """An ImageFolder tree: root/<class>/<image>; every image must have the same size and mode."""
    from torchvision.datasets import ImageFolder

    if not Path(root).is_dir():
        raise DatasetError(f"image folder {root!r} does not exist; expected root/<class>/<image> files")
    try:
        folder = ImageFolder(root)
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetError(f"image folder {root!r}: {err}") from err
    images, labels = [], []
    for path, label in folder.samples:
        try:
            images.append(_pil_to_array(folder.loader(path)))
        except OSError as err:
            raise DatasetError(f"cannot read image {path}: {err}") from err
        labels.append(label)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DatasetError(
            f"images under {root!r} have different shapes {sorted(shapes)}; resize them to one size"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(folder.classes)


def load_source(dataset: dict):
    source = dataset["source"]
    if source == "sklearn-digits":
        return load_digits_source()
    if source == "torchvision":
        return load_torchvision_source(dataset["name"], dataset["root"], dataset.get("download", False))
    if source == "imagefolder":
        return load_imagefolder_source(dataset["root"])
    raise DatasetError(f"unknown dataset source {source!r}")


def split_arrays(images, labels, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Stratified train/val/test split, identical for a given seed."""
    from sklearn.model_selection import train_test_split  # imported here: costs 3 s per job

    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    val_share = val_fraction / (1.0 - test_fraction)
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=val_share, random_state=seed, stratify=rest_y
    )
    return {
        "train_x": train_x, "train_y": train_y,
        "val_x": val_x, "val_y": val_y,
        "test_x": test_x, "test_y": test_y,
    }  # fmt: skip


def describe(arrays: dict, classes: list[str]) -> dict:
    """Facts later rules need (shape, classes) and the class balance of each split."""
    facts = {
        "classes": classes,
        "num_classes": len(classes),
        "channels": int(arrays["train_x"].shape[1]),
        "image_size": [int(s) for s in arrays["train_x"].shape[2:]],
    }
    for split in SPLITS:
        counts = np.bincount(arrays[f"{split}_y"], minlength=len(classes))
        facts[f"{split}_count"] = int(counts.sum())
        facts[f"{split}_class_counts"] = [int(c) for c in counts]
    return facts


def loader(arrays: dict, split: str, batch_size: int, shuffle: bool = False, seed: int = 0):
    """A DataLoader over one split; in-process (num_workers=0) so energy windows see all work."""
    dataset = TensorDataset(torch.from_numpy(arrays[f"{split}_x"]), torch.from_numpy(arrays[f"{split}_y"]))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
