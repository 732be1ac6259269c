"""Train/val/test splits of a source's images: stratified, seeded, described."""

import numpy as np

from joulebench.data.sources import DatasetError, image_count

SPLITS = ("train", "val", "test")


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
