"""Cost of our training loop against a minimal plain PyTorch loop, and of energy monitoring.

Three arms run the same model, data, batches and optimizer steps, interleaved (the order rotates
every repeat) so drift in machine load hits all alike:

- plain:  a minimal PyTorch loop (pytorch/examples style): AdamW steps over the same DataLoader,
          then the same per-epoch validation pass our loop does (it is what early stopping and
          time-to-accuracy need, so both arms pay it);
- ours:   joulebench.train.loop.train with the real EnergyMeter (one Zeus window per epoch);
- ours, monitor off: the same with a meter that measures nothing.

Each arm's clock runs over the training alone. A meter's fixed cost per job (its construction
and entry: Zeus's monitor, the collection freeze, the quiet-host wait and the host-speed probe,
all before the rule's window opens, and its record) is paid once per job, outside every window,
so it is timed on its own and printed as its own figure, not spread into the ratios.

Prints the minimum and median wall and CPU seconds per arm, the throughput ratio ours/plain
(target >= 0.95) and the per-window monitor overhead ratio on/off (target <= 1.01), all measured
in this one run. CPU time of this process is less disturbed by other processes on a shared machine
than wall time; both are printed. Last, the fixed cost per job, and the meter's cost per window
measured directly (empty windows), which bounds the monitor overhead without training noise.

    python bench/bench_train_loop.py [--repeats 9] [--epochs 1] [--threads 1]
"""

import argparse
import statistics
import time
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from joulebench.data import (
    loader,
    sources,
    splits,
)
from joulebench.devices import CPU
from joulebench.energy.meter import EnergyMeter
from joulebench.models import build_model
from joulebench.train.loop import TrainSettings, seed_everything, train

RECIPE = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10}
THROUGHPUT_TARGET = 0.95
MONITOR_TARGET = 1.01


class NoMeter:
    """The 'monitor off' arm: a meter whose windows measure nothing."""

    placement = CPU  # the plain loop runs on the CPU too

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    @contextmanager
    def window(self, name: str):
        yield SimpleNamespace(record={"joules": 0.0, "source": "off"})


def plain_loop(model, arrays: dict, settings: TrainSettings) -> None:
    """The minimal loop: what plain PyTorch costs for these steps and the per-epoch validation."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    batches = loader.loader(arrays, "train", settings.batch_size, shuffle=True, seed=settings.seed)
    for _ in range(settings.epochs):
        model.train()
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in loader.loader(arrays, "val", 512):
                correct += int((model(images).argmax(1) == labels).sum())


def one_run(arm: str, arrays: dict, settings: TrainSettings) -> tuple[float, float, float]:
    """(wall, CPU) seconds of one arm's training, and the wall seconds of its meter's fixed cost
    per job (construction, entry, exit and record; 0 for the plain loop)."""
    seed_everything(0)
    model = build_model(RECIPE)
    if arm == "plain":
        wall, cpu = time.perf_counter(), time.process_time()
        plain_loop(model, arrays, settings)
        return time.perf_counter() - wall, time.process_time() - cpu, 0.0
    fixed = time.perf_counter()
    meter = EnergyMeter("bench") if arm == "ours" else NoMeter()
    with meter:
        fixed = time.perf_counter() - fixed
        wall, cpu = time.perf_counter(), time.process_time()
        train(model, arrays, settings, meter)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        closing = time.perf_counter()
    if arm == "ours":
        meter.record()
    return wall, cpu, fixed + time.perf_counter() - closing


def window_cost(repeats: int = 200) -> float:
    """Seconds one empty phase window costs inside an open rule window (what each epoch pays)."""
    with EnergyMeter("train_model") as meter:
        started = time.perf_counter()
        for index in range(repeats):
            with meter.window(f"epoch{index}"):
                pass
        return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels, _ = sources.load_digits_source()
    arrays = splits.split_arrays(images, labels, 0.15, 0.2, seed=0)
    settings = TrainSettings(epochs=args.epochs, batch_size=64, lr=3e-3, seed=0)
    arms = ["plain", "ours", "ours_monitor_off"]
    one_run("plain", arrays, settings)  # warm-up: first-call allocations and lazy imports
    one_run("ours", arrays, settings)
    times = {arm: {"wall": [], "cpu": []} for arm in arms}
    fixed_costs = []
    for repeat in range(args.repeats):
        for arm in arms[repeat % 3 :] + arms[: repeat % 3]:
            wall, cpu, fixed = one_run(arm, arrays, settings)
            times[arm]["wall"].append(wall)
            times[arm]["cpu"].append(cpu)
            if arm == "ours":
                fixed_costs.append(fixed)
    samples = args.epochs * len(arrays["train_y"])
    print(f"small_cnn on digits: {args.epochs} epochs x {len(arrays['train_y'])} samples, batch 64, ", end="")
    print(f"{args.threads} threads, {args.repeats} interleaved repeats")
    for arm in arms:
        wall, cpu = times[arm]["wall"], times[arm]["cpu"]
        print(
            f"  {arm:18s} wall min {min(wall):7.3f} s ({samples / min(wall):7.0f} samples/s) median "
            f"{statistics.median(wall):7.3f} s   cpu min {min(cpu):7.3f} s "
            f"median {statistics.median(cpu):7.3f} s"
        )
    # The minimum is the run least disturbed by other processes; the median is printed beside it.
    for kind in ("wall", "cpu"):
        for name, pick in (("min", min), ("median", statistics.median)):
            best = {arm: pick(times[arm][kind]) for arm in arms}
            throughput = best["plain"] / best["ours"]
            monitor = best["ours"] / best["ours_monitor_off"]
            print(
                f"{kind:4s} {name:6s}: throughput ratio ours/plain {throughput:.3f} (target >= "
                f"{THROUGHPUT_TARGET}: {'met' if throughput >= THROUGHPUT_TARGET else 'MISSED'}); monitor "
                f"overhead on/off {monitor:.3f} (target <= {MONITOR_TARGET}: "
                f"{'met' if monitor <= MONITOR_TARGET else 'MISSED'})"
            )
    fixed = statistics.median(fixed_costs)
    print(
        f"meter's fixed cost per job, outside every window (construction, collection freeze, quiet-host "
        f"wait, host-speed probe, record): median {fixed * 1000:.1f} ms, range "
        f"{min(fixed_costs) * 1000:.1f}-{max(fixed_costs) * 1000:.1f} ms"
    )
    cost = window_cost()
    share = args.epochs * cost / statistics.median(times["ours_monitor_off"]["wall"])
    print(f"meter's cost per window (empty windows, directly): {cost * 1000:.2f} ms")
    print(
        f"  x {args.epochs} epoch windows = {share:.4%} of the unmeasured training "
        f"-> overhead bound {1 + share:.4f}"
    )


if __name__ == "__main__":
    main()
