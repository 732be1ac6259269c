"""GPU check: Zeus's energy counter against NVML power sampled by another process, then the workflow
run as a user runs it, on a config sized for the GPU.

Counter check. Where torch computes on a GPU (joulebench.devices.accelerator) and Zeus can read
its energy counter, resnet18 (small-input stem) trains on the embedded digits upscaled to 32x32
through joulebench's own training loop, one epoch after another until --seconds have passed,
inside one EnergyMeter window. Meanwhile a process of its own (multiprocessing, spawn: it shares
no CUDA or NVML state with the trainer, and no GIL delays its readings) reads the same GPU's
nvmlDeviceGetPowerUsage every --period seconds, through the pynvml Zeus uses. The samples,
integrated with trapezoids over exactly the meter's window (interpolated at both edges), are set
against Zeus's counter over that window; the ratio is printed with PASS within TARGET (5%), MISSED
outside it. The target applies to windows of at least MIN_WINDOW_S (5 s): on Ampere and newer GPUs
nvmlDeviceGetPowerUsage is a one-second moving average, whose lag loses about half a second of
the load's rise at the window's start (about 1.5% of a 30 s window at full load).

Workflow check. The real `snakemake` of this environment runs this checkout's Snakefile with its
default profile (warm start and all) on config/gpu_check.yaml (or --config), in a temporary
folder (or --workdir). One line per energy record: rule, variant, device, source, joules, window
seconds. A FAIL line for each rule computing on a GPU whose record does not say nvml-counter, each
rule computing on the CPU whose record names a GPU, and each training on the CPU of a GPU host.

Where torch computes on no GPU, both parts print SKIP (nothing is measured) and the status is 0;
--config runs the workflow part anyway (on a small config: the default one needs a GPU to finish
in minutes). Otherwise the status is 1 on MISSED or FAIL.

    python checks/gpu_energy_check.py [--seconds 30] [--period 0.01] [--config PATH] [--workdir DIR]
        [--no-workflow] [--arch resnet18] [--image-size 32] [--batch-size 64]
"""

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGET = 0.05
MIN_WINDOW_S = 5.0
GPU_CHECK_CONFIG = ROOT / "config" / "gpu_check.yaml"
# dataset.root of config/gpu_check.yaml: the embedded digits written as PNG files in the run's folder.
DIGITS_FOLDER = "digits_png"
SAMPLER_START_TIMEOUT_S = 120.0


class Skip(Exception):
    """No GPU to check here: the reason is printed after SKIP."""


# --- Counter check: the sampler process ---------------------------------------------------------


def sample_power(nvml_index: int, period: float, stop, connection) -> None:
    """The sampler process: (unix time, watts) of nvmlDeviceGetPowerUsage every `period` seconds
    until `stop` is set, then the samples and this process's id through `connection`.

    pynvml comes from zeus.device.gpu.nvidia, the module Zeus itself reads NVML through (and the
    one a simulated host replaces). Each reading is stamped with the middle of its call. The first
    reading precedes the "sampling" message and the last one follows `stop`, so the samples
    enclose any window that opens after the message and closes before `stop`.
    """
    from zeus.device.gpu import nvidia

    pynvml = nvidia.pynvml
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)

    def reading() -> tuple[float, float]:
        before = time.time()
        milliwatts = pynvml.nvmlDeviceGetPowerUsage(handle)
        return (before + time.time()) / 2, milliwatts / 1000.0

    samples = [reading()]
    connection.send("sampling")
    due = time.time()
    while not stop.is_set():
        due += period
        time.sleep(max(0.0, due - time.time()))
        samples.append(reading())
    samples.append(reading())
    connection.send({"pid": os.getpid(), "samples": samples})
    pynvml.nvmlShutdown()


class PowerSampler:
    """Runs sample_power in a spawned process for the duration of a `with` block; afterwards
    `samples` holds its (unix time, watts) readings and `pid` its process id."""

    def __init__(self, nvml_index: int, period: float):
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.connection, self.child_end = context.Pipe(duplex=False)
        self.process = context.Process(
            target=sample_power, args=(nvml_index, period, self.stop, self.child_end), daemon=True
        )
        self.samples: list[tuple[float, float]] = []
        self.pid: int | None = None

    def __enter__(self):
        self.process.start()
        # Only the sampler writes now: if it dies, reading ends (EOFError) instead of waiting forever.
        self.child_end.close()
        if not self.connection.poll(SAMPLER_START_TIMEOUT_S):
            self.process.kill()
            raise RuntimeError(f"the power sampler process took no sample in {SAMPLER_START_TIMEOUT_S:.0f} s")
        self._receive()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        result = self._receive()
        self.process.join()
        self.samples, self.pid = result["samples"], result["pid"]
        return False

    def _receive(self):
        try:
            return self.connection.recv()
        except EOFError:
            self.process.join()
            raise RuntimeError(
                f"the power sampler process ended with status {self.process.exitcode} (its error is above)"
            ) from None

    def median_period(self) -> float:
        times = [t for t, _ in self.samples]
        return statistics.median(later - earlier for earlier, later in zip(times, times[1:], strict=False))


def interpolate(samples: list[tuple[float, float]], at: float) -> float:
    """Watts at time `at`, linear between the two samples around it."""
    for (t0, w0), (t1, w1) in zip(samples, samples[1:], strict=False):
        if t0 <= at <= t1:
            return w0 + (w1 - w0) * (at - t0) / (t1 - t0) if t1 > t0 else w0
    raise ValueError(f"no power samples around t={at}; the sampler must run through the whole window")


def trapezoid_joules(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """The trapezoidal integral of (unix time, watts) samples over exactly [start, end]."""
    inside = [(t, w) for t, w in samples if start < t < end]
    points = [(start, interpolate(samples, start)), *inside, (end, interpolate(samples, end))]
    pairs = zip(points, points[1:], strict=False)
    return sum((w0 + w1) / 2 * (t1 - t0) for (t0, w0), (t1, w1) in pairs)


# --- Counter check: training under the meter ----------------------------------------------------


def metered_gpu(meter) -> dict:
    """The facts of the GPU the meter reads through Zeus's energy counter; Skip where there is none."""
    if meter.placement.gpu is None:
        raise Skip("torch computes on no GPU here")
    facts = meter.facts.get(f"gpu{meter.placement.gpu}")
    if facts is None or "nvml_index" not in facts:
        raise Skip(f"Zeus cannot meter this GPU through NVML ({meter.gpu_access.reason})")
    if facts["source"] != "nvml-counter":
        raise Skip(f"{facts['name']} has no NVML energy counter (Zeus integrates its power itself)")
    return facts


def train_for(seconds: float, model, arrays: dict, settings, meter) -> int:
    """Train epoch after epoch until `seconds` have passed; returns the number of epochs."""
    from joulebench.train.loop import train

    started, epochs = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        train(model, arrays, settings, meter)
        epochs += settings.epochs
    return epochs


def counter_check(args) -> bool:
    """Zeus's GPU joules against the sampled power's over one training window; True on PASS."""
    import torch
    from gpu_precision import digits_arrays

    from joulebench.devices import accelerator
    from joulebench.energy.meter import EnergyMeter
    from joulebench.models import build_model
    from joulebench.train.loop import TrainSettings, seed_everything

    placement = accelerator()
    meter = EnergyMeter("gpu_energy_check", placement=placement)
    gpu = metered_gpu(meter)
    arrays = digits_arrays(args.image_size)
    seed_everything(0)
    side = [args.image_size, args.image_size]
    model = build_model({"arch": args.arch, "in_channels": 1, "num_classes": 10, "image_size": side})
    settings = TrainSettings(epochs=1, batch_size=args.batch_size, lr=1e-3, seed=0)
    # CUDA's context and first kernels before the window: the window holds training only.
    model.to(placement.torch_device)
    with torch.no_grad():
        model(torch.from_numpy(arrays["train_x"][: args.batch_size]).to(placement.torch_device))
    with PowerSampler(gpu["nvml_index"], args.period) as sampler, meter:
        epochs = train_for(args.seconds, model, arrays, settings, meter)
    record = meter.record()
    zeus_joules = record["devices"][f"gpu{placement.gpu}"]["joules"]
    sampled_joules = trapezoid_joules(sampler.samples, record["start_unix"], record["end_unix"])
    ratio = zeus_joules / sampled_joules
    within = abs(ratio - 1) <= TARGET and record["wall_time_s"] >= MIN_WINDOW_S
    print(f"GPU: {gpu['name']} (NVML index {gpu['nvml_index']}, driver {gpu.get('driver_version')})")
    print(
        f"window: {record['wall_time_s']:.2f} s, {epochs} epochs of {args.arch} on digits "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}"
    )
    print(f"Zeus {record['zeus_version']} energy counter ({gpu['source']}): {zeus_joules:.1f} J")
    print(
        f"NVML power samples (nvmlDeviceGetPowerUsage in process {sampler.pid}, not this one "
        f"{os.getpid()}; {len(sampler.samples)} samples, median period "
        f"{sampler.median_period() * 1000:.1f} ms; trapezoids over the window): {sampled_joules:.1f} J"
    )
    verdict = "PASS" if within else "MISSED"
    print(
        f"ratio Zeus / samples = {ratio:.4f}: {verdict} (target {1 - TARGET:.2f} to {1 + TARGET:.2f} "
        f"on windows of at least {MIN_WINDOW_S:.0f} s)"
    )
    return within


# --- Workflow check ------------------------------------------------------------------------------


def write_digits_folder(root: Path) -> None:
    """The embedded digits as 8x8 grey PNG files, root/<class>/<index>.png."""
    import numpy as np
    from PIL import Image

    from joulebench.data import sources as data

    images, labels, classes = data.load_digits_source()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(image[0] * 255).astype(np.uint8), mode="L").save(folder / f"{index}.png")


def prepare_run(config_path: Path, workdir: Path) -> Path:
    """The config the run reads, in `workdir`; the digits folder written where it names one."""
    import yaml

    config = yaml.safe_load(config_path.read_text())
    dataset = config["dataset"]
    if dataset.get("root") == DIGITS_FOLDER:
        write_digits_folder(workdir / DIGITS_FOLDER)
        dataset["root"] = str(workdir / DIGITS_FOLDER)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(config: Path, workdir: Path) -> list[str]:
    """`snakemake --cores N` as a user runs it: this environment's snakemake, this checkout's
    Snakefile (whose profiles/default Snakemake loads by itself), results under `workdir`."""
    executable = Path(sys.executable).parent / "snakemake"
    program = [str(executable)] if executable.exists() else [sys.executable, "-m", "snakemake"]
    return [
        *program, "--cores", str(os.cpu_count() or 1),
        "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(config),
    ]  # fmt: skip


def energy_records(results: Path) -> list[tuple[Path, dict]]:
    """Every energy record of a run: each rule output's energy.json and the idle baseline's."""
    paths = sorted(results.rglob("energy.json")) + sorted(results.glob("energy/idle_power.json"))
    return [(path.relative_to(results), json.loads(path.read_text())) for path in paths]


def variant_of(path: Path) -> str:
    """The variant a record belongs to, from its folder (results/<stage>/<dataset>/<model>/<variant>/...)."""
    parts = path.parts
    if parts[0] in ("models", "eval") and len(parts) > 4:
        return parts[3]
    if parts[:1] == ("data",) and "subsets" in parts:
        return parts[parts.index("subsets") + 1]
    return "-"


def device_of(record: dict) -> str:
    placement = record["placement"]
    if placement["gpu_cuda_index"] is None:
        return "cpu"
    return f"GPU {placement['gpu_cuda_index']} ({record['gpu'].get('name') or 'unnamed'})"


def record_failures(path: Path, record: dict, gpu_host: bool) -> list[str]:
    """What the record gets wrong about the devices it metered; empty when nothing."""
    label = f"{record['rule']} {path.parent}"
    sources = set(record["source"].split("+"))
    gpu_parts = [name for name in record["devices"] if name.startswith("gpu")]
    failures = []
    if record["placement"]["gpu_cuda_index"] is not None:
        if "nvml-counter" not in sources or not record["gpu"]["metered"]:
            reason = record["gpu"].get("reason") or "no counter reading"
            failures.append(f"{label} computes on a GPU but its source is {record['source']} ({reason})")
    elif gpu_parts or record["gpu"]["used"] or any(source.startswith("nvml") for source in sources):
        failures.append(f"{label} computes on the CPU but its record names a GPU ({record['source']})")
    trained_on_cpu = record["rule"] == "train_model" and record["placement"]["gpu_cuda_index"] is None
    if gpu_host and trained_on_cpu and record.get("device", {}).get("pinned") != "cpu":
        failures.append(f"{label} trained on the CPU of a GPU host")
    return failures


def energy_table(records: list[tuple[Path, dict]]) -> list[str]:
    """One line per record: rule, variant, device, source, joules, window seconds."""
    header = f"{'rule':<20} {'variant':<14} {'device':<34} {'source':<44} {'joules':>10} {'window s':>9}"
    lines = [header]
    for path, record in records:
        lines.append(
            f"{record['rule']:<20} {variant_of(path):<14} {device_of(record):<34} {record['source']:<44} "
            f"{record['joules']:>10.2f} {record['wall_time_s']:>9.2f}"
        )
    return lines


def workflow_check(config_path: Path, workdir: Path, gpu_host: bool) -> bool:
    """Run the workflow on `config_path` in `workdir`, print its energy table; True when no FAIL."""
    command = snakemake_command(prepare_run(config_path, workdir), workdir)
    print(f"workflow: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(f"workflow finished with status {result.returncode} in {time.perf_counter() - started:.0f} s")
    failures = []
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
        failures.append(f"snakemake exited with status {result.returncode}")
    records = energy_records(workdir / "results")
    print("\n".join(energy_table(records)))
    if not records:
        failures.append("the run left no energy record")
    for path, record in records:
        failures.extend(record_failures(path, record, gpu_host))
        if record["short_windows"]:
            short = ", ".join(record["short_windows"])
            print(f"NOTE: {record['rule']} {path.parent}: windows under the counter's period: {short}")
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print("workflow check: PASS (GPU rules say nvml-counter, CPU rules name no GPU)")
    return not failures


# --- Both -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    def window_seconds(text: str) -> float:
        if float(text) < MIN_WINDOW_S:
            raise argparse.ArgumentTypeError(f"the target needs windows of at least {MIN_WINDOW_S:.0f} s")
        return float(text)

    parser.add_argument("--seconds", type=window_seconds, default=30.0, help="training window length (s)")
    parser.add_argument("--period", type=float, default=0.01, help="power sampling period (s)")
    parser.add_argument("--config", type=Path, help="workflow config (default: config/gpu_check.yaml)")
    parser.add_argument("--workdir", type=Path, help="folder of the workflow run (default: a temporary one)")
    parser.add_argument("--no-workflow", action="store_true", help="the counter check only")
    parser.add_argument("--arch", default="resnet18", help="model of the counter check")
    parser.add_argument("--image-size", type=int, default=32, help="digits upscaled to this side")
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args(argv)


def run_counter_check(args, gpu_host: bool) -> bool:
    try:
        if not gpu_host:
            raise Skip("torch computes on no GPU here")
        return counter_check(args)
    except Skip as reason:
        print(f"SKIP: counter check: {reason}; it needs an NVIDIA GPU with NVML (nothing was measured).")
        return True


def run_workflow_check(args, gpu_host: bool) -> bool:
    if not gpu_host and args.config is None:
        print(
            "SKIP: workflow check: torch computes on no GPU here, and config/gpu_check.yaml is sized "
            "for one (--config runs a smaller config here)."
        )
        return True
    config = args.config or GPU_CHECK_CONFIG
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return workflow_check(config.resolve(), args.workdir.resolve(), gpu_host)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        return workflow_check(config.resolve(), Path(folder), gpu_host)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from joulebench.devices import accelerator

    gpu_host = accelerator().gpu is not None
    passed = True
    # The workflow first: its jobs start while this process has created no CUDA context.
    if not args.no_workflow:
        passed = run_workflow_check(args, gpu_host)
    return 0 if run_counter_check(args, gpu_host) and passed else 1


if __name__ == "__main__":
    sys.exit(main())
