"""Data augmentation: an albumentations 2 pipeline declared in config (`augmentation.transforms`).

Each transform is {name: <albumentations class>, params: {...}}. The pipeline is built once at
config time (check_transforms) so a typo in a name or a parameter stops the run before any job,
then applied online to training batches (AugmentedImages), or offline to write augmented copies.
Images are (C, H, W) float32 in [0, 1]; albumentations wants (H, W, C), which it gets.
"""

import difflib
import logging
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)


class AugmentationError(ValueError):
    """A transform that albumentations does not know or will not build, named by its config key."""


def build_pipeline(transforms: list[dict], seed: int | None = None):
    """albumentations.Compose of the configured transforms; raises AugmentationError naming the key."""
    import albumentations as A

    steps = []
    for position, spec in enumerate(transforms):
        key = f"augmentation.transforms[{position}]"
        name, params = spec["name"], spec["params"]
        transform_class = getattr(A, name, None)
        if not (isinstance(transform_class, type) and issubclass(transform_class, A.BasicTransform)):
            known = [
                n
                for n in dir(A)
                if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform)
            ]
            guess = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(guess)}?" if guess else "; see the albumentations docs"
            raise AugmentationError(
                f"{key}.name: {name!r} is not an albumentations {A.__version__} transform{hint}"
            )
        # albumentations only warns about unknown keyword arguments: make that an error here.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                steps.append(transform_class(**params))
            except (TypeError, ValueError) as err:
                raise AugmentationError(f"{key}.params: {name} rejects {params}: {err}") from None
        for warning in caught:
            if "not valid for transform" in str(warning.message):
                raise AugmentationError(f"{key}.params: {warning.message} ({name})")
    return A.Compose(steps, seed=seed)


def check_transforms(transforms: list[dict], image_shape: tuple = (3, 32, 32)) -> None:
    """Build the pipeline and run it once on a blank (C, H, W) image, before any job."""
    pipeline = build_pipeline(transforms, seed=0)
    try:
        # A warning here means a transform does nothing on such images (hue on grey): an error too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            augment_image(pipeline, np.zeros(image_shape, dtype=np.float32))
    except Exception as err:  # noqa: BLE001 - any failure here is a config error
        raise AugmentationError(
            f"augmentation.transforms: the pipeline fails on a {image_shape} (C, H, W) image: {err}"
        ) from None


def augment_image(pipeline, image: np.ndarray) -> np.ndarray:
    """One (C, H, W) float32 image through the pipeline, back to (C, H, W) float32 in [0, 1]."""
    out = pipeline(image=np.ascontiguousarray(image.transpose(1, 2, 0)))["image"]
    if out.ndim == 2:  # some transforms drop a single channel axis
        out = out[:, :, None]
    return np.clip(out.transpose(2, 0, 1), 0.0, 1.0).astype(np.float32)


class AugmentedImages(Dataset):
    """A training split whose images are augmented afresh every time they are drawn."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pipeline, pixel_max: int = 255):
        self.images, self.labels, self.pipeline = images, labels, pipeline
        self.pixel_max = pixel_max  # stored uint8 images become floats in [0, 1] here

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / np.float32(self.pixel_max)
        image = augment_image(self.pipeline, image)
        return torch.from_numpy(image), torch.tensor(self.labels[index])


def materialize(arrays: dict, transforms: list[dict], copies: int, seed: int) -> dict:
    """The splits with the training split followed by `copies` augmented copies of it (offline)."""
    pipeline = build_pipeline(transforms, seed=seed)
    augmented = dict(arrays)
    images = [arrays["train_x"]]
    for _ in range(copies):
        images.append(np.stack([augment_image(pipeline, image) for image in arrays["train_x"]]))
    augmented["train_x"] = np.concatenate(images)
    for key in ("train_y", "train_id"):
        augmented[key] = np.tile(arrays[key], copies + 1)
    return augmented


def plot_samples(images: np.ndarray, transforms: list[dict], seed: int, path, columns: int = 4) -> None:
    """A grid: each row one image, then `columns` augmentations of it; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from joulebench import store

    pipeline = build_pipeline(transforms, seed=seed)
    fig, axes = plt.subplots(
        len(images), columns + 1, figsize=(1.2 * (columns + 1), 1.2 * len(images)), squeeze=False
    )
    for row, image in enumerate(images):
        shown = [image] + [augment_image(pipeline, image) for _ in range(columns)]
        for column, picture in enumerate(shown):
            ax = axes[row, column]
            grey = picture.shape[0] == 1
            ax.imshow(
                picture[0] if grey else picture.transpose(1, 2, 0),
                cmap="gray" if grey else None,
                vmin=0,
                vmax=1,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("original" if column == 0 else f"augmented {column}", fontsize=7)
    names = ", ".join(spec["name"] for spec in transforms)
    fig.suptitle(f"Augmentation: {names}", fontsize=8)
    fig.tight_layout()
    store.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150, metadata={"Software": None}))
    plt.close(fig)
