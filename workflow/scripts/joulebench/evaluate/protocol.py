"""The measurement protocol of inference energy: warm-up, window length, trials, gaps, threads.

One inference measurement is a *window* of whole test-set passes, repeated until it has lasted
`evaluation.inference_min_seconds` and made `min_passes` passes, after an unmeasured warm-up of
`warmup_seconds`, on `threads` CPU threads; a comparison repeats it for `rounds` trials with a
random gap of up to `max_gap_seconds` before each window (all keys of `evaluation`). The figure
reported is the median over trials, with its spread (interquartile range).

On a GPU the protocol is raised to the practices of Yang, Adámek & Armour (SC'24, "Part-time
Power Measurements: nvidia-smi's Lack of Attention"), which cut their measured error from about
39% to 4.9%: NVML updates its power and energy readings from samples that cover only part of the
runtime (25% on A100/H100) every ~100 ms, and power rises for a while after work starts. So:
discard the rise time (warm-up of at least GPU_MIN_WARMUP_S), run each window for at least
GPU_MIN_WINDOW_S and GPU_MIN_PASSES repetitions, and repeat at least GPU_MIN_ROUNDS trials with
random delays between them, so the sampling phase differs from trial to trial. Zeus reads NVML's
energy counter, which is built from the same samples, so the same practices apply.
"""

import random
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

# Yang, Adámek & Armour (SC'24): >= 32 repetitions lasting >= 5 s, >= 4 trials with random delays.
GPU_MIN_WINDOW_S = 5.0
GPU_MIN_PASSES = 32
GPU_MIN_ROUNDS = 4
GPU_MIN_WARMUP_S = 1.0
GPU_MIN_GAP_S = 0.2


@dataclass(frozen=True)
class Protocol:
    threads: int
    warmup_seconds: float
    min_window_seconds: float
    min_passes: int
    rounds: int
    max_gap_seconds: float
    reference: str = "configured (evaluation)"

    @classmethod
    def from_config(cls, evaluation: dict, device_type: str) -> "Protocol":
        """The configured protocol, raised to the GPU practices where the model runs on a GPU."""
        protocol = cls(
            threads=evaluation["threads"],
            warmup_seconds=evaluation["warmup_seconds"],
            min_window_seconds=evaluation["inference_min_seconds"],
            min_passes=evaluation["min_passes"],
            rounds=evaluation["rounds"],
            max_gap_seconds=evaluation["max_gap_seconds"],
        )
        if device_type != "cuda":
            return protocol
        return replace(
            protocol,
            warmup_seconds=max(protocol.warmup_seconds, GPU_MIN_WARMUP_S),
            min_window_seconds=max(protocol.min_window_seconds, GPU_MIN_WINDOW_S),
            min_passes=max(protocol.min_passes, GPU_MIN_PASSES),
            rounds=max(protocol.rounds, GPU_MIN_ROUNDS),
            max_gap_seconds=max(protocol.max_gap_seconds, GPU_MIN_GAP_S),
            reference="Yang, Adámek & Armour, SC'24 (GPU minimums applied)",
        )

    def describe(self) -> dict:
        return asdict(self)

    @contextmanager
    def fixed_threads(self):
        """torch on `threads` CPU threads while measuring, as configured (restored afterwards)."""
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def warm_up(run_pass: Callable[[], object], seconds: float) -> int:
    """Run passes, unmeasured, for `seconds` (at least one): caches, clocks and power settle."""
    started, passes = time.perf_counter(), 0
    while passes == 0 or time.perf_counter() - started < seconds:
        run_pass()
        passes += 1
    return passes


def repeat_for(run_pass: Callable[[], object], protocol: Protocol) -> tuple[int, float]:
    """Passes, one after another, until the window has lasted long enough and made enough passes.
    Returns (passes, seconds)."""
    started, passes = time.perf_counter(), 0
    while passes < protocol.min_passes or time.perf_counter() - started < protocol.min_window_seconds:
        run_pass()
        passes += 1
    return passes, time.perf_counter() - started


def interleaved_order(names: list[str], rounds: int, seed: int) -> list[list[str]]:
    """Every name once per round, in an order shuffled afresh each round (seeded): machine drift
    then falls on every variant alike, and no variant always runs after the same neighbour."""
    generator = random.Random(seed)
    order = []
    for _ in range(rounds):
        shuffled = list(names)
        generator.shuffle(shuffled)
        order.append(shuffled)
    return order


def random_gap(generator: random.Random, protocol: Protocol) -> float:
    """Sleep a random delay before a window (a new sampling phase each trial); returns it."""
    gap = generator.uniform(0.0, protocol.max_gap_seconds)
    time.sleep(gap)
    return gap


def median_and_spread(values: list[float]) -> tuple[float, float]:
    """(median, interquartile range); the IQR is 0 for fewer than two values."""
    if len(values) < 2:
        return values[0], 0.0
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), quartiles[2] - quartiles[0]
