"""Data-parallel training, 2 processes against 1: throughput and energy per training sample.

Both arms run the real data_parallel worker through torchrun (gloo on the CPU, nccl on GPUs),
on the digits with the same model, epochs and global batch size, interleaved (the order swaps
every repeat) so drift in machine load hits both alike. Each process computes with
`--threads-per-process` CPU threads (default 1: the 2-process arm uses twice the cores).

Throughput counts training samples over the epoch windows' wall time (validation included, start-up
excluded); energy per sample is the epoch windows' joules (the record's source says whether a
counter or the Green Algorithms estimate produced them) over the same samples. Prints the median
per arm and the ratios 2-process / 1-process.

    python bench/bench_data_parallel.py [--repeats 3] [--epochs 3] [--threads-per-process 1]
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from joulebench import store
from joulebench.data import (
    sources,
    splits,
)
from joulebench.train.data_parallel import launch_training


def run_arm(folder: Path, processes: int, threads: int, epochs: int, batch_size: int, arm: str) -> dict:
    spec = {
        "splits": str(folder / "splits.npz"),
        "facts": str(folder / "dataset.json"),
        "model": "small_cnn",
        "variant": {"technique": "data_parallel", "processes": processes},
        "training": {"epochs": epochs, "batch_size": batch_size, "lr": 0.003, "weight_decay": 0.0},
        "seed": 0,
        "energy": {"estimate": {"power_per_core_w": 12.0, "memory_w_per_gb": 0.3725}},
        "augmentation": {},
        "out_dir": str(folder / arm),
    }
    torch.set_num_threads(processes * threads)  # the job's threads, shared out over its processes
    with open(folder / f"{arm}.log", "a") as log:
        stream, sys.stderr = sys.stderr, log
        try:
            launch_training(spec, processes)
        finally:
            sys.stderr = stream
    record = store.read_json(folder / arm / "energy.json")
    epochs_windows = [w for w in record["windows"] if w["window"].startswith("epoch")]
    samples = len(store.load_arrays(spec["splits"])["train_y"]) * len(epochs_windows)
    seconds = sum(w["wall_time_s"] for w in epochs_windows)
    joules = sum(w["joules"] for w in epochs_windows)
    return {
        "samples_per_s": samples / seconds,
        "joules_per_sample": joules / samples,
        "source": record["source"],
        "busy": bool(record["busy_host_windows"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads-per-process", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_data_parallel_") as tmp:
        folder = Path(tmp)
        images, labels, classes = sources.load_digits_source()
        arrays = splits.split_arrays(images, labels, 0.15, 0.2, seed=0)
        store.save_arrays(folder / "splits.npz", arrays)
        store.write_json(folder / "dataset.json", splits.describe(arrays, classes))
        results = {1: [], 2: []}
        for repeat in range(args.repeats):
            for processes in (1, 2) if repeat % 2 == 0 else (2, 1):
                result = run_arm(
                    folder, processes, args.threads_per_process, args.epochs, args.batch_size, f"p{processes}"
                )
                results[processes].append(result)
                print(
                    f"repeat {repeat + 1} {processes} process(es): {result['samples_per_s']:.0f} samples/s, "
                    f"{1000 * result['joules_per_sample']:.2f} mJ/sample ({result['source']}"
                    f"{', busy host' if result['busy'] else ''})",
                    flush=True,
                )
    keys = ("samples_per_s", "joules_per_sample")
    median = {p: {k: statistics.median(r[k] for r in rs) for k in keys} for p, rs in results.items()}
    print(f"\nsmall_cnn on digits, {args.epochs} epochs, global batch {args.batch_size}, "
          f"{args.threads_per_process} thread(s) per process, median of {args.repeats}:")  # fmt: skip
    for processes, values in median.items():
        print(
            f"  {processes} process(es): {values['samples_per_s']:8.0f} samples/s  "
            f"{1000 * values['joules_per_sample']:6.2f} mJ/sample"
        )
    throughput = median[2]["samples_per_s"] / median[1]["samples_per_s"]
    energy = median[2]["joules_per_sample"] / median[1]["joules_per_sample"]
    print(f"  throughput ratio 2/1:        {throughput:.2f}x")
    print(f"  energy-per-sample ratio 2/1: {energy:.2f}x")


if __name__ == "__main__":
    main()
