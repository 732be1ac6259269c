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
host's CPU model in Green Algorithms' table, or its generic 12 W where the model is not listed
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
import multiprocessing
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version

import psutil
import torch
from zeus.device.gpu import nvidia

from joulebench.devices import CPU, GpuAccess, Placement, board_power_w, gpu_name, mig_share, probe_gpu
from joulebench.energy import cpu_power, host_speed
from joulebench.energy.boundary import energy_boundary
from joulebench.energy.contention import BUSY_HOST_MIN_CPU_S, BUSY_HOST_SHARE, wait_for_quiet_host

log = logging.getLogger(__name__)


def _import_zeus_monitor():
    """zeus.monitor.ZeusMonitor, without importing scikit-learn into every job.

    zeus.monitor.power imports `sklearn.metrics.auc` at module level, which pulls in scipy.stats:
    0.75 s of each job's 3 s of imports on this project's 2-core machine. Zeus calls `auc` only to
    integrate sampled power (GPUs without an energy counter), so it gets a stand-in that imports
    the real `auc` on its first call; the stand-in leaves sys.modules as soon as Zeus is imported.
    """
    import sys
    import types

    if "zeus.monitor.power" in sys.modules or "sklearn.metrics" in sys.modules:
        from zeus.monitor import ZeusMonitor

        return ZeusMonitor

    def auc(x, y):
        from sklearn.metrics import auc as sklearn_auc

        return sklearn_auc(x, y)

    stand_in = types.ModuleType("sklearn.metrics")
    stand_in.auc = auc
    sys.modules["sklearn.metrics"] = stand_in
    try:
        from zeus.monitor import ZeusMonitor
    finally:
        if sys.modules.get("sklearn.metrics") is stand_in:
            del sys.modules["sklearn.metrics"]
    return ZeusMonitor


ZeusMonitor = _import_zeus_monitor()

RECORD_SCHEMA = "joulebench.energy/1"
ESTIMATE_MODEL = "green-algorithms"
# What an estimate counts, written into each one: the figure is the process's own share, with no
# idle host and no facility overhead (docs/trackers.md converts it to what other trackers print).
ESTIMATE_SCOPE = {
    "memory_counted": "peak RSS of the process (Green Algorithms counts the memory available to the job)",
    "idle_power_included": False,
    "pue_included": False,
}
# Update period of NVML's energy counter: about 100 ms on recent data-centre GPUs (Zeus's
# approx_instant_energy exists because windows shorter than it can read 0 J). Windows shorter
# than this are flagged even where the counter happened to tick.
NVML_COUNTER_PERIOD_S = 0.1


@dataclass(frozen=True)
class EstimateModel:
    """Constants of the Green Algorithms model; defaults are its published values.

    `power_per_core_w`: None looks it up by this host's CPU model (joulebench.energy.cpu_power), and
    `power_per_core_source` says where the value came from. `gpu_power_w`: board power of a GPU
    NVML cannot read (None: look it up by name in the shipped table); `gpu_usage`: its usage factor
    (Green Algorithms assumes 1.0 where it is not known).
    """

    power_per_core_w: float | None = None
    memory_w_per_gb: float = 0.3725
    gpu_power_w: float | None = None
    gpu_usage: float = 1.0
    power_per_core_source: str = field(default="energy.estimate.power_per_core_w", init=False)

    def __post_init__(self):
        if self.power_per_core_w is None:
            watts, source = cpu_power.watts_per_core(cpu_model())
            object.__setattr__(self, "power_per_core_w", watts)
            object.__setattr__(self, "power_per_core_source", source)

    def cpu_joules(self, cpu_seconds: float) -> float:
        return cpu_seconds * self.power_per_core_w

    def memory_joules(self, wall_seconds: float, memory_gb: float) -> float:
        return wall_seconds * memory_gb * self.memory_w_per_gb

    def joules(self, cpu_seconds: float, wall_seconds: float, memory_gb: float) -> float:
        """The CPU and memory terms (the GPU term applies only to an unreadable GPU, see gpu_term)."""
        return self.cpu_joules(cpu_seconds) + self.memory_joules(wall_seconds, memory_gb)


@dataclass(frozen=True)
class GpuTerm:
    """Green Algorithms' GPU term for a GPU that computes but cannot be metered: watts x seconds."""

    watts: float
    board_power_w: float
    usage: float
    share: float
    source: str

    def describe(self) -> dict:
        return {
            "watts": self.watts,
            "board_power_w": self.board_power_w,
            "usage": self.usage,
            "share_of_gpu": self.share,
            "board_power_source": self.source,
        }


def gpu_term(model: EstimateModel, placement: Placement, access: GpuAccess) -> GpuTerm | None:
    """The GPU term where the placement's GPU computes but NVML cannot read it, else None."""
    if not access.used or access.metered:
        return None
    name = gpu_name(placement)
    if model.gpu_power_w is not None:
        board, source = model.gpu_power_w, "energy.estimate.gpu_power_w"
    else:
        found = board_power_w(name)
        if found is None:
            raise RuntimeError(
                f"the GPU this rule computes on ({name or 'unnamed'}) cannot be metered ({access.reason}) "
                "and its board power is not in workflow/resources/gpu_board_power.csv: set "
                "energy.estimate.gpu_power_w to its board power in watts (nvidia-smi -q -d POWER shows it)"
            )
        board, source = found
    share = mig_share(name)
    return GpuTerm(board * model.gpu_usage * share, board, model.gpu_usage, share, source)


def _process_cpu_seconds() -> float:
    """CPU seconds of this process and of every process it started, running or ended."""
    running = multiprocessing.active_children()  # reaps the ended ones first
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + _running_cpu_seconds(running)


def _running_cpu_seconds(children) -> float:
    """CPU seconds of child processes that have not been reaped yet (DataLoader workers, which
    live as long as their loader; Zeus's polling processes), with their own reaped children. The
    kernel adds a child's time to RUSAGE_CHILDREN only once it is waited for, so without this a
    window that ends while they run misses their work and counts it as other processes'. The
    children are the ones multiprocessing started (listing every process of the host to find
    children costs milliseconds a window); read after RUSAGE_CHILDREN, one that ends in between
    is missed for that reading rather than counted twice."""
    total = 0.0
    for child in children:
        try:
            times = psutil.Process(child.pid).cpu_times()
        except (psutil.Error, TypeError):  # ended since it was listed, or not started
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def own_process_ids() -> set[int]:
    """This process and its running descendants: the processes whose work is the rule's own."""
    ids = {os.getpid()}
    for child in psutil.Process().children(recursive=True):
        ids.add(child.pid)
    return ids


def _host_busy_cpu_seconds() -> float:
    """CPU seconds every process on the host has spent since boot (all cores, idle and iowait
    excluded)."""
    times = psutil.cpu_times()
    # Linux counts guest (virtual machine) time inside user and nice already: count it once.
    counted_twice = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - counted_twice


def imported_packages(before: frozenset) -> list[str]:
    """Top-level packages first imported since `before` (sys.modules then): importing is never the
    measured work, and its time (disk cache, bytecode) varies from run to run, so a stage imports
    what its work needs before its window opens. A window that still imports says so here."""
    return sorted({name.split(".")[0] for name in set(sys.modules) - before})


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


def _grace_module(handle) -> bool:
    """Whether the GPU is half of a Grace superchip (GH200, GB200: its C2C link to the Grace CPU
    is enabled). NVML's energy counter then covers the whole module: GPU, Grace CPU and their
    memory, so no CPU or memory term may be added beside it."""
    pynvml = nvidia.pynvml
    try:
        return bool(pynvml.nvmlDeviceGetC2cModeInfoV(handle).isC2cEnabled)
    except pynvml.NVMLError:
        return False


def _nvidia_facts(gpus, index: int) -> dict:
    """Physical identity and driver of one NVIDIA GPU, read through the pynvml Zeus uses, and what
    its energy counter covers."""
    pynvml = nvidia.pynvml
    gpu = gpus.gpus[index]
    facts = {"nvml_index": gpu.gpu_index, "uuid": None, "driver_version": None}
    if _grace_module(gpu.handle):
        facts["covers"] = ["gpu", "cpu", "dram"]
        facts["scope"] = "module: GPU, Grace CPU and their memory"
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
            "covers": ["gpu"],
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
            "covers": ["cpu"],
        }
        if monitor.cpus.supports_get_dram_energy_consumption(index):
            devices[f"dram{index}"] = {
                "kind": "dram",
                "name": f"DRAM of package {index}",
                "source": "rapl-dram",
                "package": index,
                "device_id": f"dram:package{index}",
                "covers": ["dram"],
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
            "covers": facts[name]["covers"],
        }
    return devices


def gpu_processes(monitor) -> dict[int, dict[int, int | None]] | None:
    """Compute processes on each metered NVIDIA GPU: GPU index -> {pid: used GPU memory in bytes}.
    None where NVML cannot list them (an AMD GPU, an unsupported query)."""
    if not monitor.gpu_indices:
        return {}
    if not isinstance(monitor.gpus, nvidia.NVIDIAGPUs):
        return None
    pynvml = nvidia.pynvml
    found = {}
    for index in monitor.gpu_indices:
        try:
            listed = pynvml.nvmlDeviceGetComputeRunningProcesses(monitor.gpus.gpus[index].handle)
        except pynvml.NVMLError:
            return None
        found[index] = {process.pid: process.usedGpuMemory for process in listed}
    return found


def other_gpu_processes(seen: list[dict | None], own_ids, computing_here: bool) -> list[dict] | None:
    """Processes other than the rule's own on its metered GPUs at either edge of a window: the GPU
    twin of busy_host (the GPU's counter counts their work too). `seen`: gpu_processes at each
    edge; `own_ids()`: the rule's process IDs (listing them scans /proc: only done when NVML listed
    any process); `computing_here`: this process holds a CUDA context, so
    NVML must list it. None where NVML cannot tell, including when it lists none of the rule's
    processes although this one computes there: its process IDs are then those of another PID
    namespace (a container's host) and cannot be told apart."""
    if any(edge is None for edge in seen):
        return None
    listed = {
        (index, pid): memory for edge in seen for index, pids in edge.items() for pid, memory in pids.items()
    }
    if not listed:
        return []
    own = own_ids()
    if computing_here and not any(pid in own for _, pid in listed):
        return None
    return [
        {
            "device": f"gpu{index}",
            "pid": pid,
            "used_gpu_memory_mib": None if memory is None else memory / 2**20,
        }
        for (index, pid), memory in sorted(listed.items())
        if pid not in own
    ]


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


# What each window flag warns of is in the README; a record lists the windows carrying each.
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
    collection scans them all: 0.5 CPU-seconds on this project's 2-core machine with torch loaded,
    1.2 s in a job forked from the warm worker (which copies each page it touches). One that fell
    inside an inference window once made a 13 ms test pass take 0.64 s. Objects made later are
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
            _process_cpu_seconds, _host_busy_cpu_seconds, cores, time.sleep
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
            cpu_seconds_start=_process_cpu_seconds(),
            host_busy_start=_host_busy_cpu_seconds(),
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
            cpu_seconds = _process_cpu_seconds() - window.cpu_seconds_start
        others = max(0.0, _host_busy_cpu_seconds() - window.host_busy_start - cpu_seconds)
        capacity = max(measurement.time, 1e-9) * (os.cpu_count() or 1)
        other_share = min(1.0, others / capacity)
        devices = measurement_devices(measurement, self.facts, approximated)
        if memory_gb is None:
            memory_gb = _peak_memory_gb()
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


def idle_record(
    seconds: float, estimate: EstimateModel | None = None, placement: Placement = CPU, monitor=None
) -> dict:
    """Measure the devices doing nothing for `seconds`: the idle baseline of this host.

    The record gains `idle_power_w` (device_id -> watts) for measured devices only. An estimate
    has no idle component (the Green Algorithms model charges CPU time, which an idle process
    barely has), so where nothing is measured `idle_power_w` is empty.
    """
    with EnergyMeter("measure_idle_power", estimate, placement, monitor) as meter:
        time.sleep(seconds)
    record = meter.record()
    record["idle_power_w"] = {
        device["device_id"]: device["joules"] / record["wall_time_s"] for device in record["devices"].values()
    }
    return record


def rule_meter(rule: str, estimate: dict, placement: Placement = CPU) -> EnergyMeter:
    """A rule's meter over the devices it computes on (the CPU unless `placement` names a GPU);
    `estimate` is config energy.estimate, the model for what no counter covers."""
    return EnergyMeter(rule, EstimateModel(**estimate), placement)
