"""GPU check: our monitor's joules vs NVML power samples integrated over the same window.

On a machine with an NVIDIA GPU, runs a short training job (joulebench.train.train, resnet18 on
the embedded digits data, repeated until --seconds have passed) under EnergyMeter, while a
background thread samples the same GPU's power through NVML every --period seconds. It integrates
those samples (trapezoids) over the meter's rule window and prints both joule figures and their
ratio. Target: within 5% (ratio 0.95 to 1.05). Exit status 0 within target, 1 outside, and 0 with
a SKIP line where there is no NVIDIA GPU or no NVML.

    python benchmarks/gpu_energy_check.py [--seconds 30] [--period 0.02]

Power readings: NVML's instantaneous power field where the driver has it, else
nvmlDeviceGetPowerUsage, which on recent GPUs is a moving average over about one second; the
longer the run, the less that lag matters, hence --seconds.
"""

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

TARGET = 0.05


def skip(reason: str) -> None:
    print(f"SKIP: {reason}; this check needs an NVIDIA GPU with NVML (nothing was measured).")
    sys.exit(0)


class PowerSampler(threading.Thread):
    """Samples one GPU's power (W) with wall-clock timestamps until stopped."""

    def __init__(self, pynvml, nvml_index: int, period: float):
        super().__init__(daemon=True)
        self.pynvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()
        self.reading = "nvmlDeviceGetPowerUsage (averaged)"
        if self._instant() is not None:
            self.reading = "NVML_FI_DEV_POWER_INSTANT"

    def _instant(self) -> float | None:
        nvml = self.pynvml
        field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field is None:
            return None
        try:
            value = nvml.nvmlDeviceGetFieldValues(self.handle, [(field, nvml.NVML_POWER_SCOPE_GPU)])[0]
        except nvml.NVMLError:
            return None
        return value.value.uiVal / 1000.0 if value.nvmlReturn == nvml.NVML_SUCCESS else None

    def watts(self) -> float:
        if self.reading == "NVML_FI_DEV_POWER_INSTANT":
            return self._instant()
        return self.pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.time(), self.watts()))
            time.sleep(self.period)

    def joules_between(self, start: float, end: float) -> float:
        """Trapezoidal integral of the samples over [start, end], interpolating at both edges."""
        points = self.samples
        inside = [(t, w) for t, w in points if start < t < end]
        edges = [(start, _interpolate(points, start)), *inside, (end, _interpolate(points, end))]
        total = 0.0
        for (t0, w0), (t1, w1) in zip(edges, edges[1:], strict=False):
            total += (w0 + w1) / 2 * (t1 - t0)
        return total


def _interpolate(points: list[tuple[float, float]], at: float) -> float:
    for (t0, w0), (t1, w1) in zip(points, points[1:], strict=False):
        if t0 <= at <= t1:
            return w0 + (w1 - w0) * (at - t0) / (t1 - t0) if t1 > t0 else w0
    raise ValueError(f"no power samples around t={at}; the sampler must cover the whole window")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="minimum length of the training window")
    parser.add_argument("--period", type=float, default=0.02, help="power sampling period (s)")
    args = parser.parse_args()
    try:
        import pynvml
    except ImportError:
        skip("nvidia-ml-py (pynvml) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        skip(f"NVML is not available ({error})")
    import torch

    if not torch.cuda.is_available():
        skip("PyTorch sees no CUDA device")

    from joulebench import data
    from joulebench.energy import EnergyMeter
    from joulebench.models import build_model
    from joulebench.train import TrainSettings, seed_everything, train

    images, labels, _ = data.load_digits_source()
    arrays = data.split_arrays(images, labels, 0.15, 0.2, seed=0)
    seed_everything(0)
    model = build_model({"arch": "resnet18", "in_channels": 1, "num_classes": 10, "precision": "fp32"})
    settings = TrainSettings(epochs=5, batch_size=64, lr=0.003, seed=0)

    meter = EnergyMeter("gpu_energy_check")
    gpu = meter.facts.get("gpu0")
    if gpu is None or "nvml_index" not in gpu:
        skip("Zeus found no NVIDIA GPU to monitor")
    sampler = PowerSampler(pynvml, gpu["nvml_index"], args.period)
    sampler.start()
    time.sleep(1.0)  # samples before the window, so its start edge can be interpolated
    with meter:
        started = time.perf_counter()
        rounds = 0
        while time.perf_counter() - started < args.seconds:
            train(model, arrays, settings, meter)
            rounds += 1
    time.sleep(1.0)  # and after it, for the end edge
    sampler.stopped.set()
    sampler.join()
    record = meter.record()

    zeus_joules = record["devices"]["gpu0"]["joules"]
    sampled_joules = sampler.joules_between(record["start_unix"], record["end_unix"])
    ratio = zeus_joules / sampled_joules
    within = abs(ratio - 1) <= TARGET
    print(f"GPU: {gpu['name']} (NVML index {gpu['nvml_index']}, driver {gpu.get('driver_version')})")
    print(f"window: {record['wall_time_s']:.2f} s, {rounds} x {settings.epochs} epochs of resnet18 on digits")
    source = record["devices"]["gpu0"]["source"]
    print(f"EnergyMeter (Zeus {record['zeus_version']}, {source}): {zeus_joules:.1f} J")
    print(
        f"NVML power samples ({sampler.reading}, {len(sampler.samples)} samples every "
        f"{args.period * 1000:.0f} ms, trapezoids): {sampled_joules:.1f} J"
    )
    verdict = "within" if within else "OUTSIDE"
    print(f"ratio meter / samples = {ratio:.4f} ({verdict} the +-{TARGET:.0%} target)")
    sys.exit(0 if within else 1)


if __name__ == "__main__":
    main()
