"""Overhead of energy measurement on a training rule: EnergyMeter on vs a no-op meter.

The same training (joulebench.train.train on the embedded digits data, fixed seed) runs with the
real EnergyMeter (ZeusMonitor construction, a rule window and one window per epoch) and with a
meter that measures nothing, interleaved so drift in machine load hits both alike. Prints the
median wall and CPU times (CPU time of this process is far less disturbed by other processes on a
shared machine) and their ratios, plus the meter's own cost measured directly (construction and
empty windows), which bounds the overhead without training noise. Target: ratio <= 1.01.

    python benchmarks/bench_energy_overhead.py [--repeats 7] [--epochs 3]
"""

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import torch  # noqa: E402

from joulebench import data  # noqa: E402
from joulebench.energy import EnergyMeter  # noqa: E402
from joulebench.models import build_model  # noqa: E402
from joulebench.train import TrainSettings, seed_everything, train  # noqa: E402

TARGET_RATIO = 1.01


class NoMeter:
    """A meter that measures nothing: the 'off' arm (its windows report no energy)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    @contextmanager
    def window(self, name: str):
        yield SimpleNamespace(record={"joules": 0.0, "source": "off"})


def one_training(arrays: dict, epochs: int, measured: bool) -> tuple[float, float]:
    """(wall, CPU) seconds for one training rule's work, meter construction included."""
    seed_everything(0)
    model = build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "precision": "fp32"})
    settings = TrainSettings(epochs=epochs, batch_size=64, lr=0.003, seed=0)
    wall, cpu = time.perf_counter(), time.process_time()
    meter = EnergyMeter("train_model") if measured else NoMeter()
    with meter:
        train(model, arrays, settings, meter)
    return time.perf_counter() - wall, time.process_time() - cpu


def meter_cost(epochs: int, repeats: int = 50) -> float:
    """Seconds the meter itself adds to one training rule: construction + rule and epoch windows."""
    started = time.perf_counter()
    for _ in range(repeats):
        with EnergyMeter("train_model") as meter:
            for epoch in range(epochs):
                with meter.window(f"epoch{epoch}"):
                    pass
        meter.record()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    images, labels, _ = data.load_digits_source()
    arrays = data.split_arrays(images, labels, 0.15, 0.2, seed=0)
    one_training(arrays, 1, measured=True)  # warm-up: imports, allocator, Zeus device probing
    times = {True: [], False: []}
    for repeat in range(args.repeats):
        # Alternate which arm goes first, so neither always runs on a warmer machine.
        for measured in (True, False) if repeat % 2 == 0 else (False, True):
            times[measured].append(one_training(arrays, args.epochs, measured))
    print(f"training rule ({args.epochs} epochs, small_cnn on digits), {args.repeats} interleaved repeats")
    for index, clock in enumerate(("wall", "CPU")):
        on = statistics.median(t[index] for t in times[True])
        off = statistics.median(t[index] for t in times[False])
        ratio = on / off
        verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
        print(f"  {clock:>4} time: meter on {on:.3f} s, off {off:.3f} s (medians); ratio {ratio:.4f}"
              f" ({verdict} the <= {TARGET_RATIO} target)")  # fmt: skip
    cost = meter_cost(args.epochs)
    off_wall = statistics.median(t[0] for t in times[False])
    share = cost / off_wall
    print(f"  meter's own cost per rule (construction + {args.epochs + 1} windows): {cost * 1000:.2f} ms")
    print(f"  = {share:.4%} of the unmeasured rule's wall time -> ratio bound {1 + share:.4f}")


if __name__ == "__main__":
    main()
