"""The data stage at scale: an image folder of real digits at random sizes, prepared and cleaned.

1. Writes N PNG files (default 100,000) under --dir: scikit-learn's real handwritten digits, each
   resized to a random size between 24 and 64 px, in root/<digit>/<n>.png (reused if present).
2. Runs prepare_dataset (decode, bring to 32x32, split) and clean_dataset (content hashes, crop
   hashes, near-duplicate search, diversity), each in its own process on --threads threads, and
   prints its peak RSS (target: under 2 GB) and images per second per core (images / CPU-seconds,
   and images / wall-second / threads).
3. Times one epoch of the training input pipeline, joulebench.data.loader.loader over the prepared
   uint8 splits (before cleaning), against torchvision's ImageFolder + DataLoader (decode,
   Resize, ToTensor) on the same training files, with the same workers and batch size, and
   prints the ratio (target >= 0.95).

    python bench/bench_data_scale.py [--images 100000] [--threads 2] [--workers 2]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from joulebench.config import resolved_config
from joulebench.data.prepared import prepared_files

ROOT = Path(__file__).resolve().parents[1]

ENERGY = {"power_per_core_w": 12.0, "memory_w_per_gb": 0.3725}
CLEANING = {**resolved_config()["cleaning"], "examples_per_reason": 3}
IMAGE_SIZE = 32


def write_folder(root: Path, count: int, seed: int = 0) -> None:
    """`count` PNG files of real digits at random sizes 24-64 px, grey, in root/<digit>/."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == count:
        return
    digits = load_digits()
    rng = np.random.default_rng(seed)
    pixels = np.uint8(np.rint(digits.images * 255 / 16))
    for name in digits.target_names:
        (root / str(name)).mkdir(parents=True, exist_ok=True)
    for number in range(count):
        source = number % len(pixels)
        side = int(rng.integers(24, 65))
        image = Image.fromarray(pixels[source]).resize((side, side), Image.BILINEAR)
        image.save(root / str(digits.target[source]) / f"{number}.png")


def run_stage(stage: str, folder: Path, work: Path, threads: int) -> None:
    """One stage in this process (the parent measures it)."""
    import torch

    from joulebench.data.stages import clean_dataset, prepare_dataset

    torch.set_num_threads(threads)
    raw = prepared_files(work / "raw")
    if stage == "prepare":
        dataset = {"name": "scale", "source": "imagefolder", "root": str(folder), "image_size": IMAGE_SIZE}
        dataset |= {"resize": "stretch", "val_fraction": 0.15, "test_fraction": 0.2, "split_seed": 0}
        prepare_dataset({}, raw, dataset, CLEANING["enabled"], ENERGY)
    else:
        out = {
            key: work / f"{key}.out"
            for key in ("splits", "facts", "report", "removed", "lookalikes", "energy")
        }
        out["splits"] = work / "splits.npz"
        clean_dataset(raw, out, CLEANING, ENERGY)


def measure(stage: str, folder: Path, work: Path, threads: int, images: int) -> None:
    """Run a stage as a child process; print its peak RSS and throughput per core."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    command = [sys.executable, __file__, "--stage", stage, "--folder", str(folder), "--work", str(work)]
    subprocess.run([*command, "--threads", str(threads)], check=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest of any child so far: stages run in order, prepare first.
    print(
        f"{stage}: {images} images, peak RSS {after.ru_maxrss / 1024:.0f} MB (children so far), "
        f"wall {wall:.1f} s, CPU {cpu:.1f} s; {images / cpu:.0f} images per CPU-second, "
        f"{images / wall / threads:.0f} images/s per core of {threads}"
    )


def loader_ratio(folder: Path, work: Path, workers: int, batch_size: int) -> None:
    """One epoch of our loader vs ImageFolder + DataLoader over the same training files."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from joulebench import store
    from joulebench.data import loader

    torch.set_num_threads(1)
    arrays = store.open_arrays(prepared_files(work / "raw")["splits"])  # the prepared, uncleaned splits
    names = [str(name) for name in arrays["item_names"]]
    train_files = {names[i] for i in arrays["train_id"]}

    def epoch(batches) -> tuple[float, int]:
        started, seen = time.perf_counter(), 0
        for images, _ in batches:
            seen += len(images)
        return time.perf_counter() - started, seen

    ours_s, ours_n = epoch(loader.loader(arrays, "train", batch_size, shuffle=True, workers=workers))
    transform = transforms.Compose(
        [transforms.Grayscale(), transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)), transforms.ToTensor()]
    )
    folder_set = datasets.ImageFolder(str(folder), transform=transform)
    chosen = [
        i
        for i, (path, _) in enumerate(folder_set.samples)
        if str(Path(path).relative_to(folder)) in train_files
    ]
    theirs = DataLoader(Subset(folder_set, chosen), batch_size, shuffle=True, num_workers=workers)
    theirs_s, theirs_n = epoch(theirs)
    print(
        f"training input pipeline, one epoch of {ours_n} images, batch {batch_size}, {workers} workers: "
        f"joulebench {ours_n / ours_s:.0f} images/s, ImageFolder+DataLoader {theirs_n / theirs_s:.0f} "
        f"images/s; ratio {ours_n / ours_s / (theirs_n / theirs_s):.2f} (target >= 0.95)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/joulebench_scale"))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--stage", choices=["prepare", "clean"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.folder or args.dir / f"digits{args.images}"
    work = args.work or args.dir / f"work{args.images}"
    if args.stage:
        run_stage(args.stage, folder, work, args.threads)
        return
    started = time.perf_counter()
    write_folder(folder, args.images)
    seconds = time.perf_counter() - started
    print(f"image folder: {args.images} PNG files, 24-64 px, at {folder} ({seconds:.0f} s)")
    work.mkdir(parents=True, exist_ok=True)
    measure("prepare", folder, work, args.threads, args.images)
    measure("clean", folder, work, args.threads, args.images)
    report = json.loads((work / "report.out").read_text())
    print(
        f"cleaning: removed {report['removed_by_reason']}; thresholds {report['near_duplicate_thresholds']}"
    )
    print(f"diversity (train): {json.dumps(report['diversity'])}")
    loader_ratio(folder, work, args.workers, args.batch_size)


if __name__ == "__main__":
    main()
