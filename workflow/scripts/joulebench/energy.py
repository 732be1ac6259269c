"""Energy measurement: Zeus windows with provenance, and a labelled estimate where no counter exists.

Every compute rule wraps its work in an `EnergyMeter`. The meter opens one Zeus window for the
whole rule and one per named phase (epoch, calibration, evaluation); Zeus synchronizes the GPU at
both edges of every window, so queued kernels are counted in the window that launched them. Each
window becomes a record that says which counter produced each number:

- `nvml-counter`: NVML's total-energy counter (NVIDIA Volta and newer);
- `nvml-power-integration`: Zeus integrates NVML power samples (older NVIDIA GPUs);
- `nvml-instant-power`: the window was shorter than the counter's update period, so Zeus's
  `approx_instant_energy` took instantaneous power x duration; the window is flagged `short_window`;
- `rapl` / `rapl-dram`: the CPU package / DRAM counters of Intel RAPL.

Device counters measure the whole device, whoever uses it; `joulebench.contention` finds records
whose windows overlapped on one device. Where Zeus finds no counter (no NVML, no RAPL) it returns
an empty measurement; we never report that as 0 J but as "not measured", and attach an estimate
from the Green Algorithms model (Lannelongue et al., 2021):

    E = cpu_seconds * power_per_core_w + wall_seconds * memory_gb * memory_w_per_gb

`cpu_seconds` is the process's own CPU time (user + system, all threads), which equals
cores * usage * wall time in the model's terms. PUE and carbon are applied at aggregation only
(`joulebench.carbon`).

Both kinds of figure are inflated when other processes load the host during a window: RAPL counts
the whole package, and a CPU-time estimate charges threads that spin while they wait for cores.
Each window therefore records the share of the host's CPU capacity that other processes used
(host busy time minus our own), and is flagged `busy_host` above BUSY_HOST_SHARE.
"""

import logging
import os
import platform
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version

import psutil
from zeus.device import get_gpus
from zeus.device.gpu import nvidia
from zeus.device.gpu.common import ZeusBaseGPUError
from zeus.monitor import ZeusMonitor

log = logging.getLogger(__name__)

RECORD_SCHEMA = "joulebench.energy/1"
ESTIMATE_MODEL = "green-algorithms"
# Update period of NVML's energy counter: about 100 ms on recent data-centre GPUs (Zeus's
# approx_instant_energy exists because windows shorter than it can read 0 J). Windows shorter
# than this are flagged even where the counter happened to tick.
NVML_COUNTER_PERIOD_S = 0.1
# Share of the host's CPU capacity used by other processes above which a window is `busy_host`,
# provided they used at least BUSY_HOST_MIN_CPU_S: the kernel counts CPU time in 10 ms ticks, so
# in a 50 ms window one tick of a background daemon would otherwise read as 10% of two cores.
BUSY_HOST_SHARE = 0.10
BUSY_HOST_MIN_CPU_S = 0.1


@dataclass(frozen=True)
class EstimateModel:
    """Constants of the Green Algorithms model; defaults are its published generic values."""

    power_per_core_w: float = 12.0
    memory_w_per_gb: float = 0.3725

    def joules(self, cpu_seconds: float, wall_seconds: float, memory_gb: float) -> float:
        return cpu_seconds * self.power_per_core_w + wall_seconds * memory_gb * self.memory_w_per_gb


def _process_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _host_busy_cpu_seconds() -> float:
    """CPU seconds every process on the host has spent since boot (all cores, idle and iowait
    excluded)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _peak_memory_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_facts() -> dict:
    return {
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "zeus_version": version("zeus"),
        "cpu_model": cpu_model(),
    }


def job_gpu_indices() -> list[int]:
    """The GPUs this job computes on, as Zeus (CUDA) indices after CUDA_VISIBLE_DEVICES.

    Our rules run on `cuda` = the first visible GPU, so the meter measures that one only: the
    other visible GPUs do no work for the job, and counting them would add their idle power and
    make every job look as if it shared them. Under SLURM, `gpu=1` makes it the job's own GPU.
    """
    try:
        gpus = get_gpus()
    except ZeusBaseGPUError:
        return []
    return [0] if len(gpus) else []


def _nvidia_facts(gpus, index: int) -> dict:
    """Physical identity and driver of one NVIDIA GPU, read through the pynvml Zeus uses."""
    pynvml = nvidia.pynvml
    gpu = gpus.gpus[index]
    facts = {"nvml_index": gpu.gpu_index, "uuid": None, "driver_version": None}
    try:
        facts["uuid"] = pynvml.nvmlDeviceGetUUID(gpu.handle)
        facts["driver_version"] = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError as error:
        log.warning("NVML did not give the UUID/driver of GPU %d: %s", index, error)
    return facts


def device_facts(monitor: ZeusMonitor) -> dict:
    """Every device the monitor reads, keyed as in the record: model, counter, physical identity.

    `device_id` names the physical device on its host (a GPU's UUID, or its NVML index where NVML
    gives no UUID; a CPU package); contention detection compares it across records.
    """
    nvidia_gpus = isinstance(monitor.gpus, nvidia.NVIDIAGPUs)
    devices = {}
    for index in monitor.gpu_indices:
        volta_or_newer = monitor.gpus.supports_get_total_energy_consumption(index)
        vendor = "nvml" if nvidia_gpus else "amdsmi"
        facts = {
            "kind": "gpu",
            "name": monitor.gpus.get_name(index),
            "source": f"{vendor}-counter" if volta_or_newer else f"{vendor}-power-integration",
            "cuda_index": index,
        }
        if nvidia_gpus:
            facts |= _nvidia_facts(monitor.gpus, index)
        physical = facts.get("uuid") or f"nvml{facts.get('nvml_index', index)}"
        facts["device_id"] = f"gpu:{physical}"
        devices[f"gpu{index}"] = facts
    model = cpu_model()
    for index in monitor.cpu_indices:
        devices[f"cpu{index}"] = {
            "kind": "cpu",
            "name": f"{model} (package {index})",
            "source": "rapl",
            "package": index,
            "device_id": f"cpu:package{index}",
        }
        if monitor.cpus.supports_get_dram_energy_consumption(index):
            devices[f"dram{index}"] = {
                "kind": "dram",
                "name": f"DRAM of package {index}",
                "source": "rapl-dram",
                "package": index,
                "device_id": f"dram:package{index}",
            }
    return devices


def measurement_devices(measurement, facts: dict, approximated: set[str]) -> dict:
    """Joules per device from a Zeus Measurement, each with the counter that produced it."""
    joules = {f"gpu{i}": e for i, e in measurement.gpu_energy.items()}
    joules |= {f"cpu{i}": e for i, e in (measurement.cpu_energy or {}).items()}
    joules |= {f"dram{i}": e for i, e in (measurement.dram_energy or {}).items()}
    devices = {}
    for name, value in joules.items():
        source = "nvml-instant-power" if name in approximated else facts[name]["source"]
        devices[name] = {
            "joules": value,
            "source": source,
            "name": facts[name]["name"],
            "device_id": facts[name]["device_id"],
        }
    return devices


@dataclass
class Window:
    """One named measurement window and, once closed, its record."""

    name: str
    start_unix: float = 0.0
    cpu_seconds_start: float = 0.0
    host_busy_start: float = 0.0
    gpu_counter_start: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)


class EnergyMeter:
    """Measure a rule's energy with Zeus, one window per phase; see the module docstring."""

    def __init__(
        self,
        rule: str,
        estimate: EstimateModel | None = None,
        monitor=None,
        gpu_indices: list[int] | None = None,
    ):
        """`gpu_indices`: the GPUs to measure (default: the job's GPU, see job_gpu_indices); a rule
        that computes on the CPU only may pass [] so an idle GPU's draw is not booked to it."""
        self.rule = rule
        self.estimate = estimate or EstimateModel()
        if gpu_indices is None:
            gpu_indices = job_gpu_indices()
        # The monitor can be injected (tests build one over mocked NVML/RAPL devices).
        self.monitor = monitor or ZeusMonitor(gpu_indices=gpu_indices, approx_instant_energy=True)
        self.facts = device_facts(self.monitor)
        self.windows: list[dict] = []
        self._rule_window: Window | None = None

    def __enter__(self):
        self._rule_window = self._begin(f"rule:{self.rule}")
        return self

    def __exit__(self, *exc_info):
        self.total = self._end(self._rule_window)
        return False

    @contextmanager
    def window(self, name: str):
        """Measure one phase; the record is appended to `windows` and yielded back via Window."""
        window = self._begin(name)
        yield window
        self.windows.append(self._end(window))

    def _begin(self, name: str) -> Window:
        window = Window(
            name=name,
            start_unix=time.time(),
            cpu_seconds_start=_process_cpu_seconds(),
            host_busy_start=_host_busy_cpu_seconds(),
        )
        self.monitor.begin_window(name)
        # Zeus's own start reading of each energy counter, to tell later whether it moved at all.
        window.gpu_counter_start = dict(self.monitor.measurement_states[name].gpu_energy)
        return window

    def _unmoved_counters(self, window: Window) -> set[str]:
        """GPUs whose energy counter did not tick during the window: Zeus approximated them."""
        unmoved = set()
        for index, start_joules in window.gpu_counter_start.items():
            if self.monitor.gpus.get_total_energy_consumption(index) / 1000.0 == start_joules:
                unmoved.add(f"gpu{index}")
        return unmoved

    def _end(self, window: Window) -> dict:
        measurement = self.monitor.end_window(window.name)
        approximated = self._unmoved_counters(window)
        cpu_seconds = _process_cpu_seconds() - window.cpu_seconds_start
        others = max(0.0, _host_busy_cpu_seconds() - window.host_busy_start - cpu_seconds)
        capacity = max(measurement.time, 1e-9) * (os.cpu_count() or 1)
        other_share = min(1.0, others / capacity)
        devices = measurement_devices(measurement, self.facts, approximated)
        estimate = {
            "model": ESTIMATE_MODEL,
            "joules": self.estimate.joules(cpu_seconds, measurement.time, _peak_memory_gb()),
            "cpu_seconds": cpu_seconds,
            "peak_rss_gb": _peak_memory_gb(),
            "power_per_core_w": self.estimate.power_per_core_w,
            "memory_w_per_gb": self.estimate.memory_w_per_gb,
        }
        measured = bool(devices)
        on_gpu = any(name.startswith("gpu") for name in devices)
        window.record = {
            "window": window.name,
            "start_unix": window.start_unix,
            "end_unix": window.start_unix + measurement.time,
            "wall_time_s": measurement.time,
            "measured": measured,
            "joules": sum(d["joules"] for d in devices.values()) if measured else estimate["joules"],
            "source": "+".join(sorted({d["source"] for d in devices.values()}))
            if measured
            else f"estimate:{ESTIMATE_MODEL}",
            "short_window": bool(approximated) or (on_gpu and measurement.time < NVML_COUNTER_PERIOD_S),
            "other_processes_cpu_share": other_share,
            "busy_host": other_share > BUSY_HOST_SHARE and others >= BUSY_HOST_MIN_CPU_S,
            "devices": devices,
            "estimate": estimate,
        }
        if window.record["short_window"]:
            log.warning(
                "window %s lasted %.3f s, under the NVML counter's update period: flagged short_window",
                window.name, measurement.time,
            )  # fmt: skip
        if window.record["busy_host"]:
            log.warning(
                "window %s: other processes used %.0f%% of this host's CPUs; its energy is inflated: "
                "flagged busy_host (rerun on an idle machine to trust it)",
                window.name, 100 * other_share,
            )  # fmt: skip
        return window.record

    def record(self) -> dict:
        """The rule's energy record: totals, provenance, host and device facts, every phase window."""
        if not hasattr(self, "total"):
            raise RuntimeError("EnergyMeter.record() called before the meter was closed")
        return {
            "schema": RECORD_SCHEMA,
            "rule": self.rule,
            **host_facts(),
            "hardware": self.facts,
            **{key: value for key, value in self.total.items() if key != "window"},
            "short_windows": [w["window"] for w in [self.total, *self.windows] if w["short_window"]],
            "busy_host_windows": [w["window"] for w in [self.total, *self.windows] if w["busy_host"]],
            "windows": self.windows,
        }


def measure_idle_power(seconds: float, estimate: EstimateModel | None = None, monitor=None) -> dict:
    """Measure the devices doing nothing for `seconds`: the idle baseline of this host.

    The record gains `idle_power_w` (device_id -> watts) for measured devices only. An estimate
    has no idle component (the Green Algorithms model charges CPU time, which an idle process
    barely has), so where nothing is measured `idle_power_w` is empty.
    """
    with EnergyMeter("measure_idle_power", estimate, monitor) as meter:
        time.sleep(seconds)
    record = meter.record()
    record["idle_power_w"] = {
        device["device_id"]: device["joules"] / record["wall_time_s"] for device in record["devices"].values()
    }
    return record


def dynamic_joules(record: dict, idle: dict | None) -> float | None:
    """Energy above the idle baseline: total - idle power x wall time, summed over devices.

    None where it cannot be known: the record is an estimate, there is no idle record, it was
    taken on another host, or it lacks one of the record's devices.
    """
    if idle is None or not record["measured"] or idle.get("host") != record["host"]:
        return None
    idle_power = idle.get("idle_power_w", {})
    total = 0.0
    for device in record["devices"].values():
        if device["device_id"] not in idle_power:
            return None
        total += device["joules"] - idle_power[device["device_id"]] * record["wall_time_s"]
    return total
