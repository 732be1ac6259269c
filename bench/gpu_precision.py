"""fp32 vs fp16 vs bf16 training of resnet18 on a real NVIDIA GPU, energy measured by Zeus (NVML).

Each precision trains the same small-input resnet18 from the same seed through joulebench's own
training loop (autocast + GradScaler for fp16) inside an EnergyMeter, so every figure is the
NVML counter Zeus reads, with its provenance. Precisions run in rotating order over the repeats
so GPU warm-up and clock drift do not favour one. Printed per precision: the precision autocast
really computed in, samples/s, joules, joules per 1,000 samples, final validation accuracy, and
the ratio to fp32.

Data: the embedded digits (real, 1,797 images) upsampled to 32x32 so resnet18's stages have work,
or a torchvision CIFAR-10 folder with --cifar10-root (no download: the GPU node may be offline).

    python bench/gpu_precision.py [--epochs 3] [--repeats 2] [--batch-size 256] \
        [--channels-last] [--cifar10-root /data/cifar10] [--out gpu_precision.json]

Without a CUDA GPU it prints why and exits without measuring (status 0: nothing to compare).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from joulebench import data  # noqa: E402
from joulebench.energy import EnergyMeter  # noqa: E402
from joulebench.models import build_model  # noqa: E402
from joulebench.train import TrainSettings, effective_precision, seed_everything, train  # noqa: E402

PRECISIONS = ["fp32", "fp16", "bf16"]


def load_arrays(cifar10_root: str | None) -> dict:
    if cifar10_root:
        source = data.load_source(
            {"name": "cifar10", "source": "torchvision", "root": cifar10_root, "download": False}
        )
        images, labels = source.images, source.labels
    else:
        images, labels, _ = data.load_digits_source()
        images = F.interpolate(torch.from_numpy(images), size=32, mode="bilinear").numpy()
    return data.split_arrays(images.astype(np.float32), labels, 0.15, 0.2, seed=0)


def one_training(arrays: dict, precision: str, args) -> dict:
    seed_everything(0)
    channels = arrays["train_x"].shape[1]
    model = build_model({"arch": "resnet18", "in_channels": channels, "num_classes": 10})
    settings = TrainSettings(
        epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, precision=precision, seed=0,
        channels_last=args.channels_last,
    )  # fmt: skip
    with EnergyMeter("gpu_precision") as meter:
        history = train(model, arrays, settings, meter)
    record = meter.record()
    epochs = record["windows"]
    samples = args.epochs * len(arrays["train_y"])
    return {
        "joules": sum(w["joules"] for w in epochs),
        "seconds": sum(w["wall_time_s"] for w in epochs),
        "samples": samples,
        "source": "+".join(sorted({w["source"] for w in epochs})),
        "measured": all(w["measured"] for w in epochs),
        "val_accuracy": history[-1]["val_accuracy"],
        "gpu": next((d["name"] for d in record["hardware"].values() if d["kind"] == "gpu"), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--cifar10-root")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA GPU visible to torch; this comparison needs an NVIDIA GPU and NVML.")
        return
    arrays = load_arrays(args.cifar10_root)
    device = torch.device("cuda")
    ran = {p: effective_precision(p, device) for p in PRECISIONS}
    one_training(arrays, "fp32", argparse.Namespace(**{**vars(args), "epochs": 1}))  # warm-up, not counted
    runs = {p: [] for p in PRECISIONS}
    for repeat in range(args.repeats):
        for precision in PRECISIONS[repeat % 3 :] + PRECISIONS[: repeat % 3]:
            runs[precision].append(one_training(arrays, ran[precision], args))
    results = {}
    for precision, attempts in runs.items():
        joules = statistics.median(r["joules"] for r in attempts)
        seconds = statistics.median(r["seconds"] for r in attempts)
        results[precision] = {
            "requested": precision,
            "ran_as": ran[precision],
            "joules": joules,
            "seconds": seconds,
            "samples_per_s": attempts[0]["samples"] / seconds,
            "joules_per_1000_samples": 1000 * joules / attempts[0]["samples"],
            "val_accuracy": statistics.median(r["val_accuracy"] for r in attempts),
            "source": attempts[0]["source"],
            "measured": all(r["measured"] for r in attempts),
            "gpu": attempts[0]["gpu"],
            "repeats": len(attempts),
        }
    base = results["fp32"]
    print(
        f"resnet18, {args.epochs} epochs, batch {args.batch_size}, GPU {base['gpu']}, "
        f"medians of {args.repeats}"
    )
    for precision, row in results.items():
        print(
            f"  {precision} (ran as {row['ran_as']}): {row['samples_per_s']:9.0f} samples/s  "
            f"{row['joules']:9.1f} J ({row['source']})  {row['joules_per_1000_samples']:7.2f} J/1k samples  "
            f"val acc {row['val_accuracy']:.4f}  energy vs fp32 {row['joules'] / base['joules']:.3f}  "
            f"speed vs fp32 {row['samples_per_s'] / base['samples_per_s']:.3f}"
        )
        if not row["measured"]:
            print("    NOT MEASURED: no NVML counter was read; the joules are a Green Algorithms estimate")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
