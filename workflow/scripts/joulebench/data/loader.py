"""Batches of a split for training and evaluation: uint8 arrays to float tensors, with optional
loader workers and online augmentation."""

from contextlib import contextmanager

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

from joulebench.data.sources import DatasetError, as_float, image_count

# Where batches are consumed unless a caller says otherwise.
CPU_DEVICE = torch.device("cpu")


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
