"""Datasets as arrays: load a source, split it with a fixed seed, hand out tensors.

A prepared dataset is one uncompressed .npz: uint8 images (N, C, H, W) and int64 labels per
split, `pixel_max` (the pixel value that means 1.0: 255, or 16 for scikit-learn's digits) and a
JSON of facts (classes, shape, counts). Images become float32 in [0, 1] (x / pixel_max, the
values the decoder gave) only batch by batch in `loader`, so a split costs a quarter of the
memory of floats and can be memory-mapped (io.open_arrays).
"""

import importlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TORCHVISION_SOURCES = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "SVHN")
# dataset.resize: how an image folder of mixed sizes is brought to dataset.image_size.
RESIZE_METHODS = ("stretch", "pad", "crop")
# Where batches are consumed unless a caller says otherwise.
CPU_DEVICE = torch.device("cpu")


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


def split_arrays(images, labels, val_fraction: float, test_fraction: float, seed: int, classes=None) -> dict:
    """Stratified train/val/test split, identical for a given seed.

    `<split>_id` holds each image's index in the source, so any later step can name the file.
    Only indices are shuffled; each split's images are gathered once. `classes` names the
    classes in the error message.
    """
    from sklearn.model_selection import train_test_split  # imported here: costs 3 s per job

    ids = np.arange(len(labels), dtype=np.int64)
    val_share = val_fraction / (1.0 - test_fraction)
    names = classes or [str(c) for c in range(int(labels.max()) + 1)]
    counts = {names[c]: n for c, n in enumerate(np.bincount(labels).tolist()) if n}
    smallest = min(counts, key=counts.get)
    unsplittable = DatasetError(
        f"cannot split {image_count(len(labels))} into train/val/test with every class in each split; "
        f"images per class: {counts}; add images to the small classes (smallest: {smallest!r}, "
        f"{image_count(counts[smallest])})"
    )
    try:
        rest_id, test_id = train_test_split(ids, test_size=test_fraction, random_state=seed, stratify=labels)
        train_id, val_id = train_test_split(
            rest_id, test_size=val_share, random_state=seed, stratify=labels[rest_id]
        )
    except ValueError as err:  # sklearn: a class too small to stratify
        raise unsplittable from err
    arrays = {}
    for split, chosen in (("train", train_id), ("val", val_id), ("test", test_id)):
        arrays |= {f"{split}_x": images[chosen], f"{split}_y": labels[chosen], f"{split}_id": chosen}
    if any(set(np.unique(arrays[f"{s}_y"])) != set(np.unique(labels)) for s in SPLITS):
        raise unsplittable
    return arrays


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


def check_batch_size(train_count: int, batch_size: int) -> None:
    """A batch larger than the training split would silently train on one short batch per epoch."""
    if batch_size > train_count:
        raise DatasetError(
            f"training.batch_size {batch_size} is larger than the training split ({image_count(train_count)} "
            f"after splitting, cleaning and sampling); set training.batch_size to at most {train_count}"
        )


class Uint8Batches(Dataset):
    """A split of stored uint8 images (an array or a memory map) handed out a batch at a time:
    one gather and one float conversion per batch (index with a list of indices)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pixel_max: int):
        self.images, self.labels, self.pixel_max = images, labels, int(pixel_max)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices):
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")  # a memory map is read front to back
        gathered = self.images[indices[order]]
        images = np.empty_like(gathered)
        images[order] = gathered
        return as_float(torch.from_numpy(images), self.pixel_max), torch.from_numpy(self.labels[indices])


def loader(
    arrays: dict,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment=None,
    workers: int = 0,
    device: torch.device = CPU_DEVICE,
):
    """A DataLoader over one split, float32 images in [0, 1] and int64 labels per batch.

    `arrays` holds uint8 images and `pixel_max` as stored (io.open_arrays) or float images
    (io.load_arrays). `augment`: albumentations transforms (config `augmentation.transforms`)
    applied online. `workers` (config `training.loader_workers`): 0 keeps loading in this process,
    so the energy windows see all of its work; more start that many worker processes, kept for
    the loader's life (`stop_workers` ends them). `device`: where the batches are consumed. For
    a CUDA device they are put in pinned memory, so copies to the GPU overlap compute; for any
    other the loader never touches CUDA (pinning would create a CUDA context in a CPU rule).
    """
    images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
    pixel_max = int(arrays.get("pixel_max", 255))
    generator = torch.Generator().manual_seed(seed)
    options = {
        "generator": generator,
        "num_workers": workers,
        "pin_memory": torch.device(device).type == "cuda",
        "persistent_workers": workers > 0,
    }
    if augment:
        from joulebench.data.augment import AugmentedImages, build_pipeline

        pipeline = build_pipeline(list(augment), seed=seed)
        dataset = AugmentedImages(images, labels, pipeline, pixel_max)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **options)
    if images.dtype != np.uint8:
        # A read-only memory map of floats (an old or augmented file) is copied: tensors must be writable.
        images, labels = np.require(images, requirements="W"), np.require(labels, requirements="W")
        dataset = TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **options)
    # The sampler draws from the loader's own generator, as DataLoader(shuffle=True) does, so the
    # batches (and a checkpoint's saved generator state) are the same as for float arrays.
    dataset = Uint8Batches(images, np.asarray(labels), pixel_max)
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None, **options
    )


def stop_workers(batches: DataLoader) -> None:
    """End a loader's worker processes now and wait for them (a no-op without workers).

    Persistent workers otherwise live as long as the loader object, which a traceback can keep
    alive after its work failed; waiting for them also makes their CPU time count as this
    process's reaped children (RUSAGE_CHILDREN). DataLoader has no public way to do this.
    """
    iterator = batches._iterator
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    batches._iterator = None


@contextmanager
def workers_stopped(batches: DataLoader):
    """Use `batches` and stop its worker processes on the way out, whether the work ended or failed."""
    try:
        yield batches
    finally:
        stop_workers(batches)
