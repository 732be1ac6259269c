"""Energy measurement: Zeus windows with provenance, and a labelled estimate where no counter exists.

Every compute rule wraps its work in an `EnergyMeter`. The meter opens one Zeus window for the
whole rule and one per named phase (epoch, calibration, evaluation); Zeus synchronizes the GPU at
both edges of every window, so queued kernels are counted in the window that launched them. Each
window becomes a record that says which counter produced each number:

- `nvml-counter`: NVML's total-energy counter (NVIDIA Volta and newer);
- `nvml-power-integration`: Zeus integrates NVML power samples (older NVIDIA GPUs);
- `nvml-instant-power`: the window was shorter than the counter's update period, so Zeus's
  `approx_instant_energy` took instantaneous power x duration; the window is flagged `short_window`
  (where NVML has no instant power, an old driver or a vGPU, Zeus does not approximate: the window
  keeps the counter's reading, 0 J if it did not tick, and is flagged just the same);
- `rapl` / `rapl-dram`: the CPU package / DRAM counters of Intel RAPL.

Device counters measure the whole device, whoever uses it; `joulebench.energy.contention` finds records
whose windows overlapped on one device. Where Zeus finds no counter (no NVML, no RAPL) it returns
an empty measurement; we never report that as 0 J but as "not measured", and attach an estimate
from the Green Algorithms model (Lannelongue et al., 2021):

    E = cpu_seconds * power_per_core_w + wall_seconds * memory_gb * memory_w_per_gb

`cpu_seconds` is the process's own CPU time (user + system, all threads), which equals
cores * usage * wall time in the model's terms. `power_per_core_w` is the TDP per core of the
host's CPU model from CodeCarbon's kept TDP table, or Green Algorithms' generic 12 W
(`joulebench.energy.cpu_power`); each estimate says which (`power_per_core_source`). `memory_gb` is the
process's peak RSS, where Green Algorithms counts the memory available to the job; idle power and
PUE are not in the estimate (ESTIMATE_SCOPE, in every record). Where a GPU does the work but NVML
cannot read it (a MIG slice, no permission), the model's GPU term is added: wall_seconds * usage *
board power (x the slice's share of the GPU), the board power from energy.estimate.gpu_power_w or
the cited table workflow/resources/gpu_board_power.csv. PUE and carbon are applied at aggregation only
(`joulebench.report.carbon`).

Each rule meters the devices it computes on (`joulebench.devices.Placement`): a CPU-only rule
meters the CPU packages, a GPU rule also its GPU. A window's total (`joules`) is made of `parts`,
each labelled with its source: every metered counter, plus the estimate's term for each component
that no counter covers (the CPU where RAPL is unreadable, as on most cluster nodes; memory where
RAPL has no DRAM zone; an unreadable GPU). So a GPU node without RAPL reports the measured GPU
figure and the estimated CPU figure side by side, and `measured` is true only where every part is.

Both kinds of figure are inflated when other processes load the host during a window: RAPL counts
the whole package, and a CPU-time estimate charges threads that spin while they wait for cores.
Each window therefore records the share of the host's CPU capacity that other processes used
(host busy time minus our own), and is flagged `busy_host` above BUSY_HOST_SHARE. Other processes
are not the only drift: the host itself can run slower (a VM's CPU speed, steal time), so each
window also records a host-speed index, taken before it opened, and its steal share
(`joulebench.energy.host_speed`).
"""

import gc
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from joulebench.devices import CPU, Placement
from joulebench.energy import host_speed
from joulebench.energy.boundary import energy_boundary
from joulebench.energy.contention import BUSY_HOST_MIN_CPU_S, BUSY_HOST_SHARE, wait_for_quiet_host
from joulebench.energy.estimate import ESTIMATE_MODEL, ESTIMATE_SCOPE, EstimateModel, gpu_term
from joulebench.energy.gpu_access import probe_gpu
from joulebench.energy.inventory import (
    device_facts,
    gpu_processes,
    host_facts,
    measurement_devices,
    other_gpu_processes,
)
from joulebench.energy.process import (
    host_busy_cpu_seconds,
    imported_packages,
    own_process_ids,
    peak_memory_gb,
    process_cpu_seconds,
)
from joulebench.energy.zeus_import import ZeusMonitor

log = logging.getLogger(__name__)


RECORD_SCHEMA = "joulebench.energy/1"
# Update period of NVML's energy counter: about 100 ms on recent data-centre GPUs (Zeus's
# approx_instant_energy exists because windows shorter than it can read 0 J). Windows shorter
# than this are flagged even where the counter happened to tick.
NVML_COUNTER_PERIOD_S = 0.1


class _CounterLog:
    """The last energy-counter value Zeus read of each GPU, installed on Zeus's GPUs object.

    Zeus fills a window whose counter did not move with instant power x duration; whether it did
    is known only from the reading Zeus itself took at the window's end (reading the counter again
    afterwards can see a tick that Zeus did not).
    """

    def __init__(self, read):
        self.read = read
        self.last_mj: dict[int, int] = {}

    def __call__(self, index: int) -> int:
        self.last_mj[index] = self.read(index)
        return self.last_mj[index]

    @classmethod
    def install(cls, gpus) -> "_CounterLog":
        if not isinstance(gpus.get_total_energy_consumption, cls):
            gpus.get_total_energy_consumption = cls(gpus.get_total_energy_consumption)
        return gpus.get_total_energy_consumption


# What each window flag warns of is in the README and docs/energy-accounting.md; a record lists
# the windows carrying each.
WINDOW_FLAGS = {
    "short_window": "short_windows",
    "busy_host": "busy_host_windows",
    "busy_gpu": "busy_gpu_windows",
}


def flagged_windows(windows: list[dict]) -> dict[str, list[str]]:
    """For each window flag, the names of the windows carrying it (a window recorded before a flag
    existed carries none)."""
    return {key: [w["window"] for w in windows if w.get(flag)] for flag, key in WINDOW_FLAGS.items()}


@dataclass
class Window:
    """One named measurement window and, once closed, its record."""

    name: str
    start_unix: float = 0.0
    cpu_seconds_start: float = 0.0
    host_busy_start: float = 0.0
    modules_start: frozenset = frozenset()
    proc_stat_start: dict | None = None
    host_speed: dict = field(default_factory=dict)
    gpu_counter_start: dict = field(default_factory=dict)
    gpu_processes_start: dict | None = None
    record: dict = field(default_factory=dict)


def window_parts(devices: dict, estimate: dict) -> list[dict]:
    """What a window's total is made of: every metered device, then the estimate's term for each
    component no counter covers (CPU without RAPL, memory without a RAPL DRAM zone, a GPU that
    computes but cannot be read). A Grace superchip's GPU counter covers its CPU and memory too."""
    parts = [{"part": name, "joules": d["joules"], "source": d["source"]} for name, d in devices.items()]
    covered = {component for device in devices.values() for component in device["covers"]}
    source = f"estimate:{ESTIMATE_MODEL}"
    for component, key in (("cpu", "cpu_joules"), ("dram", "memory_joules"), ("gpu", "gpu_joules")):
        if component not in covered and estimate.get(key) is not None:
            parts.append({"part": f"{component}:estimate", "joules": estimate[key], "source": source})
    return parts


def freeze_long_lived_objects() -> None:
    """Collect garbage now, and leave every object alive before the windows (torch and the other
    libraries, the loaded model and data) out of later collections (`gc.freeze`). A full
    collection scans them all: 0.5 CPU-seconds on a 2-core CPU host with torch loaded,
    1.2 s in a job forked from the warm worker (which copies each page it touches). One that falls
    inside an inference window can make a 13 ms test pass take 0.64 s. Objects made later are
    collected as usual."""
    gc.collect()
    gc.freeze()


class EnergyMeter:
    """Measure a rule's energy with Zeus, one window per phase; see the module docstring."""

    def __init__(
        self, rule: str, estimate: EstimateModel | None = None, placement: Placement = CPU, monitor=None
    ):
        """`placement`: where the rule computes; its GPU (if any) is metered, other GPUs are not."""
        self.rule = rule
        self.estimate = estimate or EstimateModel()
        self.placement = placement
        self.gpu_access = probe_gpu(placement)
        self.gpu_term = gpu_term(self.estimate, placement, self.gpu_access)
        # Zeus's index of the GPU whose UUID is the one torch computes on (devices.probe_gpu).
        gpu_indices = [self.gpu_access.index] if self.gpu_access.metered else []
        # The monitor can be injected (tests build one over mocked NVML/RAPL devices).
        # Windows the counter did not tick in are filled from instant power, where NVML has it.
        self.monitor = monitor or ZeusMonitor(
            gpu_indices=gpu_indices, approx_instant_energy=self.gpu_access.instant_power
        )
        self.counter_log = _CounterLog.install(self.monitor.gpus) if self.monitor.gpu_indices else None
        self.facts = device_facts(self.monitor)
        self.windows: list[dict] = []
        self._rule_window: Window | None = None
        # Windows open now, and the host-speed probe taken before the outermost one opened.
        self._open_windows = 0
        self._probe: dict = {}
        self.quiet_host_wait: dict | None = None
        # Processes of the same job on the same GPUs (data-parallel ranks of one node): not others.
        self.peer_pids: set[int] = set()

    def __enter__(self):
        freeze_long_lived_objects()
        cores = os.cpu_count() or 1
        self.quiet_host_wait = wait_for_quiet_host(
            process_cpu_seconds, host_busy_cpu_seconds, cores, time.sleep
        )
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

    def probe_host(self, name: str) -> None:
        """Time the host-speed probe (joulebench.energy.host_speed) if no window is open, so that no window
        is charged for it; a window inside another carries the probe taken before the outer one."""
        if self._open_windows == 0:
            self._probe = host_speed.probe(name)

    def _begin(self, name: str, probe: bool = True) -> Window:
        """Open a window; `probe` False where the caller probed already (probe_host), as ranks that
        open their windows together do before they meet."""
        if probe:
            self.probe_host(name)
        self._open_windows += 1
        # We synchronize the device the rule computes on ourselves (Zeus would call
        # torch.cuda.synchronize on the metered GPU, which fails where torch has no CUDA).
        self.placement.synchronize()
        processes = gpu_processes(self.monitor)
        window = Window(
            name=name,
            host_speed={**self._probe, "cpu_freq_mhz": host_speed.cpu_freq_mhz()},
            proc_stat_start=host_speed.read_proc_stat(),
            start_unix=time.time(),
            cpu_seconds_start=process_cpu_seconds(),
            host_busy_start=host_busy_cpu_seconds(),
            modules_start=frozenset(sys.modules),
            gpu_processes_start=processes,
        )
        self.monitor.begin_window(name, sync_execution=False)
        # Zeus's own start reading of each energy counter, to tell later whether it moved at all.
        window.gpu_counter_start = dict(self.monitor.measurement_states[name].gpu_energy)
        return window

    def _unticked(self, window: Window) -> set[str]:
        """GPUs whose counter Zeus read unchanged at the window's end: Zeus filled them from instant
        power where it approximates, else they read 0 J."""
        return {
            f"gpu{index}"
            for index, start_joules in window.gpu_counter_start.items()
            if self.counter_log.last_mj[index] / 1000.0 == start_joules
        }

    def _end(self, window: Window, cpu_seconds: float | None = None, memory_gb: float | None = None) -> dict:
        """Close a window. `cpu_seconds` and `memory_gb` replace this process's own CPU time and
        peak memory where the meter measures for several processes (the data-parallel ranks on its
        node, joulebench.train.data_parallel): the estimate then charges all of them, once."""
        self.placement.synchronize()
        measurement = self.monitor.end_window(window.name, sync_execution=False)
        self._open_windows -= 1
        steal = host_speed.steal_share(window.proc_stat_start, host_speed.read_proc_stat())
        unticked = self._unticked(window) if window.gpu_counter_start else set()
        approximated = unticked if self.monitor.approx_instant_energy else set()
        computing_here = self.placement.torch_device.type == "cuda" and torch.cuda.is_initialized()
        others_on_gpu = other_gpu_processes(
            [window.gpu_processes_start, gpu_processes(self.monitor)],
            lambda: own_process_ids() | self.peer_pids,
            computing_here,
        )
        if cpu_seconds is None:
            cpu_seconds = process_cpu_seconds() - window.cpu_seconds_start
        others = max(0.0, host_busy_cpu_seconds() - window.host_busy_start - cpu_seconds)
        capacity = max(measurement.time, 1e-9) * (os.cpu_count() or 1)
        other_share = min(1.0, others / capacity)
        devices = measurement_devices(measurement, self.facts, approximated)
        if memory_gb is None:
            memory_gb = peak_memory_gb()
        estimate = {
            "model": ESTIMATE_MODEL,
            "cpu_joules": self.estimate.cpu_joules(cpu_seconds),
            "memory_joules": self.estimate.memory_joules(measurement.time, memory_gb),
            "gpu_joules": self.gpu_term.watts * measurement.time if self.gpu_term else None,
            "cpu_seconds": cpu_seconds,
            "peak_rss_gb": memory_gb,
            "power_per_core_w": self.estimate.power_per_core_w,
            "power_per_core_source": self.estimate.power_per_core_source,
            "memory_w_per_gb": self.estimate.memory_w_per_gb,
            **ESTIMATE_SCOPE,
            "gpu": self.gpu_term.describe() if self.gpu_term else None,
        }
        estimate["joules"] = sum(estimate[k] or 0.0 for k in ("cpu_joules", "memory_joules", "gpu_joules"))
        parts = window_parts(devices, estimate)
        estimated = [part for part in parts if part["source"].startswith("estimate")]
        on_gpu = any(name.startswith("gpu") for name in devices)
        window.record = {
            "window": window.name,
            "start_unix": window.start_unix,
            "end_unix": window.start_unix + measurement.time,
            "wall_time_s": measurement.time,
            "measured": not estimated,
            "joules": sum(part["joules"] for part in parts),
            "measured_joules": sum(d["joules"] for d in devices.values()),
            "estimated_joules": sum(part["joules"] for part in estimated),
            "source": "+".join(sorted({part["source"] for part in parts})),
            "parts": parts,
            "short_window": bool(unticked) or (on_gpu and measurement.time < NVML_COUNTER_PERIOD_S),
            "other_processes_cpu_share": other_share,
            "imported_in_window": imported_packages(window.modules_start),
            "busy_host": other_share > BUSY_HOST_SHARE and others >= BUSY_HOST_MIN_CPU_S,
            "other_gpu_processes": others_on_gpu,
            "busy_gpu": bool(others_on_gpu),
            **window.host_speed,
            "steal_share": steal,
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
        if window.record["busy_gpu"]:
            log.warning(
                "window %s: other processes computed on the metered GPU (%s); its counter counts their "
                "work too: flagged busy_gpu (rerun with the GPU to yourself to trust it)",
                window.name, ", ".join(f"pid {p['pid']} on {p['device']}" for p in others_on_gpu),
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
            "placement": self.placement.describe(),
            "gpu": self.gpu_access.describe(),
            "hardware": self.facts,
            **{key: value for key, value in self.total.items() if key != "window"},
            **flagged_windows([self.total, *self.windows]),
            "boundary": energy_boundary(self.total["parts"], self.facts),
            "quiet_host_wait": self.quiet_host_wait,
            "windows": self.windows,
        }


def rule_meter(rule: str, estimate: dict, placement: Placement = CPU) -> EnergyMeter:
    """A rule's meter over the devices it computes on (the CPU unless `placement` names a GPU);
    `estimate` is config energy.estimate, the model for what no counter covers."""
    return EnergyMeter(rule, EstimateModel(**estimate), placement)
