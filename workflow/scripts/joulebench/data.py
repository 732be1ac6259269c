"""Datasets as arrays: load a source, split it with a fixed seed, hand out tensors.

A prepared dataset is one .npz of float32 images (N, C, H, W) in [0, 1] and int64 labels per
split, plus a JSON of facts (classes, shape, counts). Every later rule reads only that file.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field
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


@dataclass
class Source:
    """Decoded images of one dataset, a name per image and the files that could not be used."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    names: list[str]
    rejected: list[dict] = field(default_factory=list)


# PIL modes that decode to one grey channel; every other mode decodes to RGB (alpha dropped).
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _open_image(path: Path):
    """Decode a whole file (PIL is lazy: load() is what finds a truncated file) to L or RGB."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("L" if image.mode in _GREY_MODES else "RGB")


def _common_mode(decoded: list) -> list:
    """Grey images among colour ones become RGB (grey copied to three channels, nothing lost);
    RGBA and palette images already decoded to RGB. Returns the list with every image converted."""
    if all(image.mode == "L" for _, _, image in decoded):
        return decoded
    greys = sum(image.mode == "L" for _, _, image in decoded)
    if greys:
        log.info("%d grey images converted to RGB to match the colour ones", greys)
    return [(name, label, image.convert("RGB")) for name, label, image in decoded]


def load_imagefolder_source(root: str, skip_unusable: bool = False) -> Source:
    """An ImageFolder tree: root/<class>/<image>, every image of one size and mode.

    With `skip_unusable`, files that do not decode and images whose size or mode differs from
    the majority are listed in `Source.rejected` (for the cleaning report) instead of raising.
    """
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"image folder {root!r} does not exist; expected root/<class>/<image> files")
    try:
        # The loader is never called: we decode ourselves to catch and report bad files.
        folder = ImageFolder(root, loader=lambda path: path, allow_empty=True)
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetError(f"image folder {root!r}: {err}; expected root/<class>/<image> files") from err
    counts = Counter(label for _, label in folder.samples)
    empty = [name for index, name in enumerate(folder.classes) if counts[index] == 0]
    if empty:
        raise DatasetError(
            f"class folders without image files under {root!r}: {', '.join(empty)}; add images "
            f"({', '.join(IMG_EXTENSIONS)}) or remove the folders"
        )
    decoded, rejected = [], []
    for path, label in folder.samples:
        name = str(Path(path).relative_to(root_path))
        try:
            image = _open_image(Path(path))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            if not skip_unusable:
                raise DatasetError(
                    f"cannot read image {path}: {err}; remove or replace the file, or enable cleaning"
                ) from err
            rejected.append({"item": name, "reason": "unreadable", "detail": str(err)})
            continue
        decoded.append((name, label, image))
    if not decoded:
        raise DatasetError(f"image folder {root!r} has no readable image files")
    decoded = _common_mode(decoded)
    expected_size = Counter(image.size for _, _, image in decoded).most_common(1)[0][0]
    images, labels, names = [], [], []
    for name, label, image in decoded:
        if image.size != expected_size:
            detail = f"size {image.size}, expected {expected_size}"
            if not skip_unusable:
                raise DatasetError(
                    f"image {root_path / name} has {detail}; every image under {root!r} must have "
                    "one size: resize it, or enable cleaning to drop it"
                )
            rejected.append({"item": name, "reason": "wrong_size", "detail": detail})
            continue
        images.append(_pil_to_array(image))
        labels.append(label)
        names.append(name)
    if rejected:
        log.warning("%d unusable files under %s left out (see the cleaning report)", len(rejected), root)
    return Source(np.stack(images), np.asarray(labels, dtype=np.int64), list(folder.classes), names, rejected)


def load_source(dataset: dict, skip_unusable: bool = False) -> Source:
    """The configured dataset, with a name per image (file path or source:index) for reports."""
    kind = dataset["source"]
    if kind == "imagefolder":
        source = load_imagefolder_source(dataset["root"], skip_unusable)
    else:
        if kind == "sklearn-digits":
            images, labels, classes = load_digits_source()
        elif kind == "torchvision":
            images, labels, classes = load_torchvision_source(
                dataset["name"], dataset["root"], dataset.get("download", False)
            )
        else:
            raise DatasetError(f"unknown dataset source {kind!r}")
        names = [f"{dataset['name']}:{index}" for index in range(len(labels))]
        source = Source(images, labels, classes, names)
    check_labels(source, f"dataset {dataset['name']!r}")
    return source


def check_labels(source: Source, where: str) -> None:
    """A classification dataset: at least two classes, every label one of them."""
    labels, classes = source.labels, source.classes
    outside = (labels < 0) | (labels >= len(classes))
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise DatasetError(
            f"{where}: {int(outside.sum())} labels are outside the {len(classes)} classes "
            f"0..{len(classes) - 1} (first: label {int(labels[first])} of {source.names[first]}); "
            "fix the labels or the class list"
        )
    present = np.unique(labels)
    if len(present) < 2:
        only = classes[int(present[0])] if len(present) else "none"
        raise DatasetError(
            f"{where}: every image is in one class ({only!r}); a classifier needs at least two classes"
        )


def split_arrays(images, labels, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Stratified train/val/test split, identical for a given seed.

    `<split>_id` holds each image's index in the source, so any later step can name the file.
    """
    from sklearn.model_selection import train_test_split  # imported here: costs 3 s per job

    ids = np.arange(len(labels), dtype=np.int64)
    val_share = val_fraction / (1.0 - test_fraction)
    counts = dict(enumerate(np.bincount(labels).tolist()))
    unsplittable = DatasetError(
        f"cannot split {len(labels)} images into train/val/test with every class in each split; "
        f"images per class: {counts}; add images to the small classes"
    )
    try:
        rest_x, test_x, rest_y, test_y, rest_id, test_id = train_test_split(
            images, labels, ids, test_size=test_fraction, random_state=seed, stratify=labels
        )
        train_x, val_x, train_y, val_y, train_id, val_id = train_test_split(
            rest_x, rest_y, rest_id, test_size=val_share, random_state=seed, stratify=rest_y
        )
    except ValueError as err:  # sklearn: a class too small to stratify
        raise unsplittable from err
    if any(set(np.unique(part)) != set(np.unique(labels)) for part in (train_y, val_y, test_y)):
        raise unsplittable
    return {
        "train_x": train_x, "train_y": train_y, "train_id": train_id,
        "val_x": val_x, "val_y": val_y, "val_id": val_id,
        "test_x": test_x, "test_y": test_y, "test_id": test_id,
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


def loader(arrays: dict, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, augment=None):
    """A DataLoader over one split; in-process (num_workers=0) so energy windows see all work.

    `augment`: albumentations transforms (config `augmentation.transforms`) applied online.
    """
    images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
    if augment:
        from joulebench.augment import AugmentedImages, build_pipeline

        dataset = AugmentedImages(images, labels, build_pipeline(list(augment), seed=seed))
    else:
        dataset = TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
