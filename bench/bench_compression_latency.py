"""CPU batch-1 latency of each compressed model relative to its fp32 baseline, in one run.

    python bench/bench_compression_latency.py [--threads 2] [--rounds 15]

Models: small_cnn on 8x8 digits (the default experiment), resnet18 on 32x32 (conv-heavy) and a
linear-heavy MLP (1024-2048-2048-10). Variants are made with joulebench's own functions; weights are
random (latency does not depend on their values: unstructured zeros still run dense kernels).
Timings are interleaved (every round times every variant once, after warm-up), so load from other
processes hits all variants alike; we print the median over rounds of each round's median.
"""

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from joulebench.compress import (
    prune,
    quantize,
)
from joulebench.models import build_model


def linear_heavy_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)
    )


def static_int8(model: nn.Module, shape: tuple) -> nn.Module:
    calibration = [torch.rand(32, *shape) for _ in range(4)]
    converted = quantize.static_int8(model, calibration)
    return quantize.lower_to_x86(converted, torch.rand(2, *shape))


def variants(model: nn.Module, shape: tuple) -> dict[str, nn.Module]:
    """Baseline and each compressed form of `model`, all in eval mode."""
    made = {"baseline": model.eval()}
    made["prune80 (unstructured)"] = prune.make_pruning_permanent(
        prune.global_magnitude_prune(copy.deepcopy(model), 0.8)
    ).eval()
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        made["channels50"] = prune.channel_prune(copy.deepcopy(model), 0.5, torch.rand(2, *shape)).eval()
    made["int8_dynamic (torchao)"] = quantize.dynamic_int8(copy.deepcopy(model))
    made["int8_static (PT2E, oneDNN)"] = static_int8(copy.deepcopy(model), shape)
    if "channels50" in made:
        made["channels50 -> int8_static"] = static_int8(copy.deepcopy(made["channels50"]), shape)
    return made


@torch.inference_mode()
def interleaved_latency_ms(models: dict[str, nn.Module], example: torch.Tensor, rounds: int, calls: int):
    for model in models.values():  # warm-up: oneDNN primitive creation, allocator
        for _ in range(20):
            model(example)
    per_round = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                model(example)
                samples.append(time.perf_counter() - started)
            per_round[name].append(statistics.median(samples) * 1000)
    return {name: statistics.median(values) for name, values in per_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [
        (
            "small_cnn 1x8x8",
            build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10}),
            (1, 8, 8),
        ),
        (
            "resnet18 3x32x32",
            build_model({"arch": "resnet18", "in_channels": 3, "num_classes": 10}),
            (3, 32, 32),
        ),
        ("mlp 1024 (linear-heavy)", linear_heavy_mlp(), (1024,)),
    ]
    print(f"CPU batch-1 latency, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print(f"{'model':26} {'variant':30} {'p50 ms':>9} {'ratio':>7}")
    for label, model, shape in cases:
        made = variants(model, shape)
        latencies = interleaved_latency_ms(made, torch.rand(1, *shape), args.rounds, args.calls)
        for name, ms in latencies.items():
            ratio = ms / latencies["baseline"]
            verdict = "faster" if ratio < 0.9 else "slower" if ratio > 1.1 else "same"
            print(f"{label:26} {name:30} {ms:9.3f} {ratio:6.2f}x {verdict}")


if __name__ == "__main__":
    main()
