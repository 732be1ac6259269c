"""Datasets as arrays: load a source (scikit-learn's digits, a torchvision dataset, an ImageFolder).

A prepared dataset is one uncompressed .npz: uint8 images (N, C, H, W) and int64 labels per
split (joulebench.data.splits), `pixel_max` (the pixel value that means 1.0: 255, or 16 for
scikit-learn's digits) and a JSON of facts (classes, shape, counts). Images become float32 in
[0, 1] (x / pixel_max, the values the decoder gave) only batch by batch in
joulebench.data.loader, so a split costs a quarter of the memory of floats and can be
memory-mapped (joulebench.store.open_arrays).
"""

import importlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

TORCHVISION_SOURCES = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "SVHN")
# dataset.resize: how an image folder of mixed sizes is brought to dataset.image_size.
RESIZE_METHODS = ("stretch", "pad", "crop")


class DatasetError(ValueError):
    """A dataset that cannot be used, with what was expected."""


def image_count(count: int, kind: str = "") -> str:
    """'1 image', '5 training images': a count of images as messages and logs print it."""
    noun = "image" if count == 1 else "images"
    return f"{count} {kind} {noun}" if kind else f"{count} {noun}"


def load_digits_source() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's digits: 1,797 real 8x8 grey images of handwritten digits, 16 grey levels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    return images, digits.target.astype(np.int64), [str(c) for c in digits.target_names]


def as_float(images, pixel_max: int):
    """Stored uint8 pixels as float32 in [0, 1]: the division the decoder's floats used, bit for bit."""
    if isinstance(images, torch.Tensor):
        return images.float() / float(pixel_max)
    return images.astype(np.float32) / np.float32(pixel_max)


def _torchvision_part_arrays(part) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) uint8 images and labels of a torchvision dataset, read from its decoded arrays."""
    images = np.asarray(part.data)
    labels = np.asarray(getattr(part, "targets", None) if hasattr(part, "targets") else part.labels)
    if images.ndim == 3:  # MNIST family: (N, H, W)
        images = images[:, None]
    elif images.shape[-1] == 3:  # CIFAR: (N, H, W, 3); SVHN is already (N, 3, H, W)
        images = images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64)


def load_torchvision_source(name: str, root: str, download: bool):
    """A torchvision dataset from a local root; train and test parts are pooled, then re-split.

    Returns uint8 (N, C, H, W) images, labels and class names.
    """
    import torchvision.datasets as tvd

    if name not in TORCHVISION_SOURCES:
        raise DatasetError(f"unknown torchvision dataset {name!r}; choose one of {TORCHVISION_SOURCES}")
    if not Path(root).is_dir() and not download:
        raise DatasetError(
            f"dataset root {root!r} does not exist; put the {name} files there or set dataset.download: true"
        )
    cls = getattr(tvd, name)
    images, labels = [], []
    for train in (True, False):
        kwargs = {"split": "train" if train else "test"} if name == "SVHN" else {"train": train}
        try:
            part = cls(root=root, download=download, **kwargs)
        except RuntimeError as err:
            raise DatasetError(f"could not read {name} under {root!r}: {err}") from err
        part_images, part_labels = _torchvision_part_arrays(part)
        images.append(part_images)
        labels.append(part_labels)
        if train:
            classes = [str(c) for c in getattr(part, "classes", [])]
    labels = np.concatenate(labels)
    classes = classes or [str(c) for c in range(int(labels.max()) + 1)]
    return np.concatenate(images), labels, classes


@dataclass
class Source:
    """Decoded uint8 images of one dataset, a name per image and the files that could not be used."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    names: list[str]
    rejected: list[dict] = field(default_factory=list)
    pixel_max: int = 255


# PIL modes that decode to one grey channel; every other mode decodes to RGB (alpha dropped).
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _open_image(path: Path, mode: str | None = None):
    """Decode a whole file (PIL is lazy: load() is what finds a truncated file) to L or RGB.

    `mode` forces the result ("RGB": grey copied to three channels, nothing lost)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert(mode or ("L" if image.mode in _GREY_MODES else "RGB"))


def _header(path: str):
    """(width, height), mode from the file header only, or None where the header does not parse."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def resize_pipeline(image_size, method: str = "stretch"):
    """The albumentations transform that brings any image to `image_size` (height, width).

    stretch: Resize (aspect ratio not kept); pad: LongestMaxSize + PadIfNeeded with black borders
    (nothing cut off); crop: SmallestMaxSize + CenterCrop (no borders, edges cut off).
    Downscaling averages pixels (INTER_AREA), so small details do not alias.
    """
    import albumentations as A

    height, width = image_size
    resize = {"interpolation": 1, "area_for_downscale": "image"}  # cv2.INTER_LINEAR up, INTER_AREA down
    if method == "stretch":
        steps = [A.Resize(height, width, **resize)]
    elif method == "pad":
        steps = [
            A.LongestMaxSize(max_size_hw=(height, width), **resize),
            A.PadIfNeeded(height, width, border_mode=0, fill=0),
        ]
    elif method == "crop":
        steps = [A.SmallestMaxSize(max_size_hw=(height, width), **resize), A.CenterCrop(height, width)]
    else:
        raise DatasetError(f"unknown dataset.resize {method!r}; choose one of {RESIZE_METHODS}")
    return A.Compose(steps)


def _size_hw(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    return (
        (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    )


def load_imagefolder_source(
    root: str, skip_unusable: bool = False, image_size=None, resize: str = "stretch", workers: int = 1
) -> Source:
    """An ImageFolder tree root/<class>/<image>, decoded in `workers` threads into one uint8 array.

    Images of any size and format are brought to `image_size` ((height, width) or one int) by
    `resize_pipeline(image_size, resize)`; without `image_size` every image must have one size.
    Grey images among colour ones become RGB. With `skip_unusable`, files that do not decode are
    listed in `Source.rejected` (for the cleaning report) instead of raising.
    """
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
    paths = [path for path, _ in folder.samples]
    names = [str(Path(path).relative_to(root_path)) for path in paths]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        headers = list(pool.map(_header, paths, chunksize=256))
    readable = [header for header in headers if header is not None]
    if not readable:
        raise DatasetError(f"image folder {root!r} has no readable image files")
    channels = 1 if all(mode in _GREY_MODES for _, mode in readable) else 3
    size_hw = _size_hw(image_size)
    if size_hw is None:
        sizes = Counter(size for size, _ in readable)
        if len(sizes) > 1:
            (common, count), (other, _) = sizes.most_common(2)
            example = names[next(i for i, h in enumerate(headers) if h is not None and h[0] == other)]
            raise DatasetError(
                f"images under {root!r} have {len(sizes)} different sizes ({image_count(count)} at "
                f"{common[0]}x{common[1]}, {root_path / example} is {other[0]}x{other[1]}); set "
                "dataset.image_size (and dataset.resize: stretch, pad or crop) to bring every image to "
                "one size"
            )
        size_hw = (readable[0][0][1], readable[0][0][0])
    pipeline = resize_pipeline(size_hw, resize) if image_size is not None else None
    images = np.zeros((len(paths), channels, *size_hw), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"

    def decode(index: int) -> str | None:
        """Decode file `index` into images[index]; the error text if it cannot be read."""
        from PIL import Image

        try:
            pixels = np.asarray(_open_image(Path(paths[index]), mode))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            return str(err) or type(err).__name__
        pixels = pixels.reshape(*pixels.shape[:2], channels)
        if pipeline is not None:
            pixels = pipeline(image=pixels)["image"].reshape(*size_hw, channels)
        images[index] = pixels.transpose(2, 0, 1)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        errors = list(pool.map(decode, range(len(paths)), chunksize=64))
    rejected = []
    for index, error in enumerate(errors):
        if error is None:
            continue
        if not skip_unusable:
            raise DatasetError(
                f"cannot read image {paths[index]}: {error}; remove or replace the file, or enable cleaning"
            )
        rejected.append({"item": names[index], "reason": "unreadable", "detail": error})
    keep = np.array([error is None for error in errors])
    if not keep.any():
        raise DatasetError(f"image folder {root!r} has no readable image files")
    if rejected:
        log.warning("%d unreadable files under %s left out (see the cleaning report)", len(rejected), root)
        images = images[keep]
    labels = np.asarray([label for _, label in folder.samples], dtype=np.int64)[keep]
    kept_names = [name for name, ok in zip(names, keep, strict=True) if ok]
    return Source(images, labels, list(folder.classes), kept_names, rejected)


# The libraries each source's loader imports (the split adds scikit-learn's): prepare_dataset
# imports them before its energy window opens, since importing is not the measured work.
SOURCE_MODULES = {
    "sklearn-digits": ("sklearn.datasets",),
    "torchvision": ("torchvision.datasets",),
    "imagefolder": ("torchvision.datasets", "PIL.Image"),
}


def import_loaders(dataset: dict) -> None:
    """Import what load_source and split_arrays will use for `dataset` (resizing: albumentations)."""
    names = [*SOURCE_MODULES[dataset["source"]], "sklearn.model_selection"]
    if dataset.get("image_size"):
        names.append("albumentations")
    for name in names:
        importlib.import_module(name)


def load_source(dataset: dict, skip_unusable: bool = False, workers: int = 1) -> Source:
    """The configured dataset, with a name per image (file path or source:index) for reports."""
    kind = dataset["source"]
    if kind == "imagefolder":
        source = load_imagefolder_source(
            dataset["root"],
            skip_unusable,
            dataset.get("image_size"),
            dataset["resize"],
            workers,
        )
    else:
        pixel_max = 255
        if kind == "sklearn-digits":
            images, labels, classes = load_digits_source()
            pixel_max = 16  # 17 grey levels 0..16, stored exactly
            images = np.rint(images * pixel_max).astype(np.uint8)
        elif kind == "torchvision":
            images, labels, classes = load_torchvision_source(
                dataset["name"], dataset["root"], dataset["download"]
            )
        else:
            raise DatasetError(f"unknown dataset source {kind!r}")
        names = [f"{dataset['name']}:{index}" for index in range(len(labels))]
        source = Source(images, labels, classes, names, pixel_max=pixel_max)
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
