"""What a record says about the hardware it measured: the host, the CPU model, each GPU (its
limits, MIG, Grace module counters) and the other processes computing on a metered GPU."""

import logging
import os
import platform
from importlib.metadata import version

from zeus.device.gpu import nvidia

from joulebench.energy.zeus_import import ZeusMonitor

log = logging.getLogger(__name__)


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
