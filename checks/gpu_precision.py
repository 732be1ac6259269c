"""fp32 vs fp16 vs bf16 training on the GPU: energy and time to one validation accuracy, per seed.

Each precision trains resnet18 (small-input stem) on the embedded digits (real, 1,797 images)
upscaled to 32x32, through joulebench's own training loop (autocast, and a GradScaler for fp16),
on the GPU torch computes on (joulebench.devices.accelerator): the model, its batches and the
EnergyMeter share that placement, so the meter reads that GPU's NVML energy counter through Zeus.
Training stops after the first epoch whose validation accuracy reaches --target-accuracy (at most
--max-epochs), all of it inside one meter window: the window's joules and seconds are the energy
and time to that accuracy, each with the counter that produced it. Every seed trains every
precision, in an order rotated from seed to seed so GPU warm-up and clock drift favour none.

Printed per precision (median and range over the seeds): the precision autocast really computed
in, joules and seconds to the target, epochs run, validation and test accuracy, and the ratio of
energy and time to fp32's; with --out, every run's record as JSON.

    python checks/gpu_precision.py [--seeds 0 1 2] [--target-accuracy 0.95] [--max-epochs 30] \
        [--batch-size 64] [--channels-last] [--out gpu_precision.json]

On an H200 a run takes a few minutes. Where torch computes on no GPU it prints SKIP and measures
nothing (status 0): a CPU table is not this comparison. --arch and --image-size train another
model or image size (small_cnn at 8x8 is the tests' quick stand-in).
"""

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from joulebench.data import (
    sources,
    splits,
)
from joulebench.devices import Placement, accelerator
from joulebench.energy.meter import EnergyMeter
from joulebench.evaluate.accuracy import accuracy
from joulebench.models import build_model
from joulebench.precision import effective_precision
from joulebench.train.loop import TrainSettings, seed_everything, train, training_summary

PRECISIONS = ["fp32", "fp16", "bf16"]
DIGITS_SIDE = 8


def digits_arrays(image_size: int) -> dict:
    """The embedded digits, bilinearly upscaled to image_size x image_size, split as the workflow
    splits them (15% validation, 20% test, split seed 0)."""
    images, labels, _ = sources.load_digits_source()
    if image_size != DIGITS_SIDE:
        images = F.interpolate(torch.from_numpy(images), size=image_size, mode="bilinear").numpy()
    return splits.split_arrays(images.astype(np.float32), labels, 0.15, 0.2, seed=0)


def train_once(arrays: dict, precision: str, seed: int, args, placement: Placement) -> dict:
    """One training to the target accuracy inside one meter window on `placement`; its figures."""
    seed_everything(seed)
    side = arrays["train_x"].shape[-1]
    recipe = {"arch": args.arch, "in_channels": 1, "num_classes": 10, "image_size": [side, side]}
    model = build_model(recipe)
    settings = TrainSettings(
        epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        precision=precision,
        seed=seed,
        target_val_accuracy=args.target_accuracy,
        channels_last=args.channels_last,
    )
    with EnergyMeter("gpu_precision", placement=placement) as meter:
        history = train(model, arrays, settings, meter)
    record = meter.record()
    summary = training_summary(history, settings)
    return {
        "precision": precision,
        "seed": seed,
        "joules": record["joules"],
        "seconds": record["wall_time_s"],
        "source": record["source"],
        "measured": record["measured"],
        "placement": record["placement"],
        "gpu": record["gpu"]["name"],
        "epochs_run": summary["epochs_run"],
        "reached_target": summary["epoch_reaching_target"] is not None,
        "val_accuracy": summary["final_val_accuracy"],
        "test_accuracy": accuracy(model, arrays, "test"),
        "short_windows": record["short_windows"],
    }


def rotated(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


def median_and_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summarize(runs: list[dict], ran_as: dict) -> dict:
    """Per precision: medians (and ranges) over the seeds, and energy and time relative to fp32."""
    summary = {}
    for precision in PRECISIONS:
        mine = [run for run in runs if run["requested"] == precision]
        summary[precision] = {
            "ran_as": ran_as[precision],
            "seeds": [run["seed"] for run in mine],
            "joules": median_and_range([run["joules"] for run in mine]),
            "seconds": median_and_range([run["seconds"] for run in mine]),
            "epochs_run": median_and_range([run["epochs_run"] for run in mine]),
            "val_accuracy": median_and_range([run["val_accuracy"] for run in mine]),
            "test_accuracy": median_and_range([run["test_accuracy"] for run in mine]),
            "reached_target": sum(run["reached_target"] for run in mine),
            "source": "+".join(sorted({run["source"] for run in mine})),
            "measured": all(run["measured"] for run in mine),
        }
    base = summary["fp32"]
    for row in summary.values():
        row["energy_vs_fp32"] = row["joules"][0] / base["joules"][0]
        row["time_vs_fp32"] = row["seconds"][0] / base["seconds"][0]
    return summary


def print_summary(summary: dict, args, gpu: str | None) -> None:
    print(
        f"{args.arch} on digits {args.image_size}x{args.image_size}, GPU {gpu}, batch {args.batch_size}, "
        f"to validation accuracy {args.target_accuracy} (at most {args.max_epochs} epochs), "
        f"seeds {args.seeds}: median [min-max]"
    )
    for precision, row in summary.items():
        joules, seconds, epochs = row["joules"], row["seconds"], row["epochs_run"]
        print(
            f"  {precision} (ran as {row['ran_as']}): {joules[0]:9.1f} J [{joules[1]:.1f}-{joules[2]:.1f}] "
            f"({row['source']})  {seconds[0]:6.2f} s [{seconds[1]:.2f}-{seconds[2]:.2f}]  "
            f"epochs {epochs[0]:g}  target reached {row['reached_target']}/{len(row['seeds'])}  "
            f"val acc {row['val_accuracy'][0]:.4f}  test acc {row['test_accuracy'][0]:.4f}  "
            f"energy vs fp32 {row['energy_vs_fp32']:.3f}  time vs fp32 {row['time_vs_fp32']:.3f}"
        )
        if not row["measured"]:
            print("    NOT MEASURED in full: part of these joules is a Green Algorithms estimate (source)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target-accuracy", type=float, default=0.95, help="validation accuracy to reach")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    placement = accelerator()
    if placement.gpu is None:
        print("SKIP: torch computes on no GPU here; this comparison trains and meters on an NVIDIA GPU.")
        return
    arrays = digits_arrays(args.image_size)
    ran_as = {p: effective_precision(p, placement.torch_device) for p in PRECISIONS}
    # Warm-up (CUDA context, cuDNN heuristics, clocks), not counted.
    warm_up = argparse.Namespace(**{**vars(args), "max_epochs": 1, "target_accuracy": None})
    train_once(arrays, "fp32", args.seeds[0], warm_up, placement)
    runs = []
    for index, seed in enumerate(args.seeds):
        for precision in rotated(PRECISIONS, index):
            run = train_once(arrays, ran_as[precision], seed, args, placement)
            runs.append({"requested": precision, **run})
    summary = summarize(runs, ran_as)
    print_summary(summary, args, runs[0]["gpu"])
    if args.out:
        settings = {key: value for key, value in vars(args).items() if key != "out"}
        result = {"settings": settings, "runs": runs, "summary": summary}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
