"""Cleaning throughput on synthetic 32x32 RGB images, on one core.

Target: thousands of images per second per core. Prints images/s for the whole
clean_splits call (content hash + window pHashes + near-duplicate search + copy check + grouping)
and per step, and the ratio to the target. The images are smooth random textures with planted
exact and near duplicates, so the grouping does real work.

    OMP_NUM_THREADS=1 python bench/bench_clean.py [--images 20000]
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # per core: before numpy starts its thread pool
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from joulebench.config import resolved_config
from joulebench.data import candidates, clean, copy_distance, image_hash

TARGET_IMAGES_PER_S = 1000.0


def synthetic_splits(count: int, seed: int = 0) -> dict:
    """Smooth 32x32 RGB textures (4x4 noise upsampled), 2% exact and 2% near duplicates."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 3, 4, 4), dtype=np.float32)
    images = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    planted = count // 50
    images[-planted:] = images[:planted]
    images[-2 * planted : -planted] = np.clip(images[planted : 2 * planted] * 1.02, 0, 1)
    images = np.clip(images, 0, 1)
    labels = rng.integers(0, 10, count)
    labels[-planted:] = labels[:planted]
    labels[-2 * planted : -planted] = labels[planted : 2 * planted]
    order = rng.permutation(count)
    cut_val, cut_test = int(0.65 * count), int(0.8 * count)
    parts = {"train": order[:cut_val], "val": order[cut_val:cut_test], "test": order[cut_test:]}
    arrays = {}
    for split, rows in parts.items():
        arrays |= {f"{split}_x": images[rows], f"{split}_y": labels[rows], f"{split}_id": rows}
    return arrays


def timed(function, *args):
    """Result and CPU seconds of this process (per core, and less disturbed by other jobs than wall)."""
    started = time.process_time()
    result = function(*args)
    return result, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--max-shift", type=int, default=2)
    args = parser.parse_args()
    arrays = synthetic_splits(args.images)
    names = [f"synthetic:{i}" for i in range(args.images)]
    settings = {**resolved_config()["cleaning"], "near_duplicate_max_shift": args.max_shift}

    pixels, t_uint8 = timed(
        image_hash.to_uint8, np.concatenate([arrays[f"{s}_x"] for s in clean.SPLIT_ORDER])
    )
    digests, t_content = timed(image_hash.content_hashes, pixels)
    features, t_features = timed(candidates.crop_features, pixels, args.max_shift)
    thresholds, t_auto = timed(candidates.auto_thresholds, features)
    (first, second, _, _), t_pairs = timed(candidates.near_pairs, features, *thresholds)
    parts = [arrays[f"{split}_x"] for split in clean.SPLIT_ORDER]
    _, t_calibration = timed(
        copy_distance.copy_threshold, [image_hash.to_uint8(part) for part in parts], 255, args.max_shift
    )
    _, t_copies = timed(copy_distance.copy_distances, features.verify, first, second, features.shift)
    wall_started = time.perf_counter()
    (_, removed), t_total = timed(clean.clean_splits, arrays, names, settings)
    wall = time.perf_counter() - wall_started

    n = args.images
    print(
        f"cleaning {n} synthetic 32x32 RGB images, one thread, max shift {args.max_shift} px, "
        f"auto thresholds {thresholds} (bits, correlation)"
    )
    print("(CPU seconds of this process; images/s = images per CPU-second, i.e. per core)")
    for step, seconds in (
        ("to uint8", t_uint8),
        ("content hash", t_content),
        ("window pHashes", t_features),
        ("auto thresholds", t_auto),
        ("near pairs (search)", t_pairs),
        ("copy threshold (calib.)", t_calibration),
        ("copy check of the pairs", t_copies),
    ):
        print(f"  {step:24s} {seconds:7.3f} s  {n / seconds:10.0f} images/s")
    print(f"  {'clean_splits total':24s} {t_total:7.3f} s  {n / t_total:10.0f} images/s")
    print(f"  wall time of clean_splits: {wall:.3f} s (load average now {os.getloadavg()[0]:.1f})")
    print(
        f"removed {len(removed)} images (planted: {2 * (n // 50)} duplicates, some grouped with neighbours)"
    )
    print(
        f"throughput / target ({TARGET_IMAGES_PER_S:.0f} images/s/core): "
        f"{n / t_total / TARGET_IMAGES_PER_S:.1f}x"
    )


if __name__ == "__main__":
    main()
