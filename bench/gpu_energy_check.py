"""GPU check: our monitor's joules vs NVML power samples, then the tiny workflow end to end.

On a machine with an NVIDIA GPU, runs a short training job (joulebench.train.train, resnet18 on
the embedded digits data, repeated until --seconds have passed) under EnergyMeter, while a
background thread samples the same GPU's power through NVML every --period seconds. It integrates
those samples (trapezoids) over the meter's rule window and prints both joule figures and their
ratio. Target: within 5% (ratio 0.95 to 1.05). Exit status 0 within target, 1 outside, and 0 with
a SKIP line where there is no NVIDIA GPU or no NVML.

It then runs the real workflow on the tiny test config (one seed, one epoch, every variant kind)
in a temporary folder and prints one line per energy record: rule, output, where it computed,
which counters (or estimate) measured it, joules. On a GPU host, training and float inference
must say nvml-counter (+ rapl where RAPL is readable), int8 and data rules never a GPU.

    python bench/gpu_energy_check.py [--seconds 30] [--period 0.02] [--no-workflow]

Power readings: NVML's instantaneous power field where the driver has it, else
nvmlDeviceGetPowerUsage, which on recent GPUs is a moving average over about one second; the
longer the run, the less that lag matters, hence --seconds.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

TARGET = 0.05


class Skip(Exception):
    """No NVIDIA GPU or no NVML here: the counter check cannot run."""


def energy_table(results: Path) -> list[str]:
    """One line per energy record under `results`: rule, output folder, device, source, joules."""
    lines = [f"{'rule':<16} {'output':<48} {'computed on':<32} {'source':<40} {'joules':>10}"]
    for path in sorted(results.rglob("energy.json")):
        record = json.loads(path.read_text())
        placement = record.get("placement", {})
        device = placement.get("torch_device", "?")
        if record.get("gpu", {}).get("used"):
            device = f"{device}, GPU {record['gpu'].get('name') or '?'}"
        output = str(path.parent.relative_to(results))
        lines.append(
            f"{record['rule']:<16} {output:<48} {device:<32} {record['source']:<40} {record['joules']:>10.2f}"
        )
    return lines


def run_tiny_workflow() -> int:
    """The real workflow on the tests' tiny config in a temporary folder; prints energy_table."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import snakemake_command, tiny_config

    with tempfile.TemporaryDirectory() as folder:
        command = snakemake_command(Path(folder), tiny_config())
        print(f"tiny workflow: {' '.join(command[1:])}", flush=True)
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
            return result.returncode
        print("\n".join(energy_table(Path(folder) / "results")))
    return 0


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
    parser.add_argument("--no-workflow", action="store_true", help="skip the tiny workflow run")
    args = parser.parse_args()
    try:
        within = counter_check(args.seconds, args.period)
    except Skip as reason:
        print(f"SKIP: {reason}; the counter check needs an NVIDIA GPU with NVML (nothing was measured).")
        within = True
    status = 0 if within else 1
    if not args.no_workflow:
        status = max(status, run_tiny_workflow())
    sys.exit(status)


def counter_check(seconds: float, period: float) -> bool:
    """The meter's GPU joules against integrated NVML power samples; True within TARGET."""
    try:
        import pynvml
    except ImportError:
        raise Skip("nvidia-ml-py (pynvml) is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        raise Skip(f"NVML is not available ({error})") from None
    import torch

    if not torch.cuda.is_available():
        raise Skip("PyTorch sees no CUDA device")

    from joulebench import data
    from joulebench.devices import accelerator
    from joulebench.energy import EnergyMeter
    from joulebench.models import build_model
    from joulebench.train import TrainSettings, seed_everything, train

    images, labels, _ = data.load_digits_source()
    arrays = data.split_arrays(images, labels, 0.15, 0.2, seed=0)
    seed_everything(0)
    model = build_model({"arch": "resnet18", "in_channels": 1, "num_classes": 10, "precision": "fp32"})
    settings = TrainSettings(epochs=5, batch_size=64, lr=0.003, seed=0)

    meter = EnergyMeter("gpu_energy_check", placement=accelerator())
    gpu = meter.facts.get("gpu0")
    if gpu is None or "nvml_index" not in gpu:
        raise Skip(f"Zeus cannot meter this GPU ({meter.gpu_access.reason})")
    sampler = PowerSampler(pynvml, gpu["nvml_index"], period)
    sampler.start()
    time.sleep(1.0)  # samples before the window, so its start edge can be interpolated
    with meter:
        started = time.perf_counter()
        rounds = 0
        while time.perf_counter() - started < seconds:
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
        f"{period * 1000:.0f} ms, trapezoids): {sampled_joules:.1f} J"
    )
    verdict = "within" if within else "OUTSIDE"
    print(f"ratio meter / samples = {ratio:.4f} ({verdict} the +-{TARGET:.0%} target)")
    return within


if __name__ == "__main__":
    main()
