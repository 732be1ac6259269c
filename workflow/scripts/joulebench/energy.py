"""Energy measurement: Zeus windows with provenance, and a labelled estimate where no counter exists.

Every compute rule wraps its work in an `EnergyMeter`. The meter opens one Zeus window for the
whole rule and one per named phase (epoch, calibration, evaluation). Each window becomes a record
that says which counter produced each number. Where Zeus finds no counter (no NVML, no RAPL) it
returns an empty measurement; we never report that as 0 J but as "not measured", and attach an
estimate from the Green Algorithms model (Lannelongue et al., 2021):

    E = cpu_seconds * power_per_core_w + wall_seconds * memory_gb * memory_w_per_gb

`cpu_seconds` is the process's own CPU time (user + system, all threads), which equals
cores * usage * wall time in the model's terms. PUE and carbon are applied at aggregation only.
"""

import logging
import os
import platform
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version

from zeus.monitor import ZeusMonitor

log = logging.getLogger(__name__)

RECORD_SCHEMA = "joulebench.energy/1"
ESTIMATE_MODEL = "green-algorithms"


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


def _peak_memory_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def host_facts() -> dict:
    return {
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "zeus_version": version("zeus"),
    }


def _device_sources(monitor: ZeusMonitor) -> dict:
    """Name and counter of every device the monitor reads, keyed as in the record."""
    devices = {}
    for index in monitor.gpu_indices:
        counter = (
            "nvml-counter"
            if monitor.gpus.supports_get_total_energy_consumption(index)
            else "nvml-power-integration"
        )
        devices[f"gpu{index}"] = {"source": counter, "name": monitor.gpus.get_name(index)}
    for index in monitor.cpu_indices:
        devices[f"cpu{index}"] = {"source": "rapl", "name": f"package-{index}"}
    return devices


def measurement_devices(measurement, sources: dict) -> dict:
    """Joules per device from a Zeus Measurement, each with the counter that produced it."""
    joules = {f"gpu{i}": e for i, e in measurement.gpu_energy.items()}
    joules |= {f"cpu{i}": e for i, e in (measurement.cpu_energy or {}).items()}
    joules |= {f"dram{i}": e for i, e in (measurement.dram_energy or {}).items()}
    devices = {}
    for name, value in joules.items():
        source = sources.get(name) or {"source": "rapl-dram", "name": name.replace("dram", "dram-")}
        devices[name] = {**source, "joules": value}
    return devices


@dataclass
class Window:
    """One named measurement window and, once closed, its record."""

    name: str
    start_unix: float = 0.0
    cpu_seconds_start: float = 0.0
    record: dict = field(default_factory=dict)


class EnergyMeter:
    """Measure a rule's energy with Zeus, one window per phase; see the module docstring."""

    def __init__(self, rule: str, estimate: EstimateModel | None = None, monitor=None):
        self.rule = rule
        self.estimate = estimate or EstimateModel()
        # The monitor can be injected (tests inject one over mocked NVML/RAPL devices).
        self.monitor = monitor or ZeusMonitor(approx_instant_energy=True)
        self.sources = _device_sources(self.monitor)
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
        window = Window(name=name, start_unix=time.time(), cpu_seconds_start=_process_cpu_seconds())
        self.monitor.begin_window(name)
        return window

    def _end(self, window: Window) -> dict:
        measurement = self.monitor.end_window(window.name)
        cpu_seconds = _process_cpu_seconds() - window.cpu_seconds_start
        devices = measurement_devices(measurement, self.sources)
        estimate = {
            "model": ESTIMATE_MODEL,
            "joules": self.estimate.joules(cpu_seconds, measurement.time, _peak_memory_gb()),
            "cpu_seconds": cpu_seconds,
            "peak_rss_gb": _peak_memory_gb(),
            "power_per_core_w": self.estimate.power_per_core_w,
            "memory_w_per_gb": self.estimate.memory_w_per_gb,
        }
        measured = bool(devices)
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
            "devices": devices,
            "estimate": estimate,
        }
        return window.record

    def record(self) -> dict:
        """The rule's energy record: totals, provenance, host facts and every phase window."""
        if not hasattr(self, "total"):
            raise RuntimeError("EnergyMeter.record() called before the meter was closed")
        return {
            "schema": RECORD_SCHEMA,
            "rule": self.rule,
            **host_facts(),
            **{key: value for key, value in self.total.items() if key != "window"},
            "windows": self.windows,
        }
