"""SIMULATED NVML for tests: an autospec of the real pynvml whose GPUs follow a power model.

`autospec_pynvml()` is the NVML library the way Zeus's own tests mock it (create_autospec keeps
every function's signature; NVML's real constants and NVMLError are kept). `SimulatedNVML` adds a
power model: each GPU draws `idle_w`, plus `busy_w` x the share of this host's CPUs that this
process keeps busy (the stand-in for "the GPU computes while the process works"), and its energy
counter, like a real one, advances only every COUNTER_PERIOD_S.
"""

import os
import resource
import time
from types import SimpleNamespace
from unittest import mock

import psutil
import pynvml

COUNTER_PERIOD_S = 0.1


def autospec_pynvml():
    module = mock.create_autospec(pynvml)
    for name in dir(pynvml):
        if name.startswith("NVML_") and isinstance(getattr(pynvml, name), int):
            setattr(module, name, getattr(pynvml, name))
    module.NVMLError = pynvml.NVMLError
    module.nvmlDeviceGetC2cModeInfoV.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    module.nvmlSystemGetDriverVersion.return_value = "550.54.15"
    module.nvmlDeviceGetUUID.side_effect = lambda handle: f"GPU-SIM-{handle}"
    module.nvmlDeviceGetHandleByIndex.side_effect = lambda index: f"handle{index}"
    # A whole GPU, not in MIG mode, alone on it, at its default 700 W limit (an H200's).
    module.nvmlDeviceGetMigMode.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    module.nvmlDeviceGetComputeRunningProcesses.return_value = []
    module.nvmlDeviceGetPowerManagementLimit.return_value = 700_000
    module.nvmlDeviceGetPowerManagementDefaultLimit.return_value = 700_000
    module.nvmlDeviceGetPowerManagementLimitConstraints.return_value = [200_000, 700_000]
    return module


def own_cpu_seconds() -> float:
    """CPU seconds of this process and the processes it started, as the meter counts a rule's own
    work (its loader workers, Zeus's helper processes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class SimulatedNVML:
    """One simulated Hopper GPU (H200) drawing idle_w + busy_w x this process's CPU share."""

    def __init__(self, idle_w: float, busy_w: float):
        self.idle_w, self.busy_w = idle_w, busy_w
        self.cores = os.cpu_count() or 1
        self.joules = 0.0
        self.updated, self.cpu = time.time(), own_cpu_seconds()
        # "This process" changes in a job forked from the warm worker (joulebench.run.warm_worker), whose CPU
        # seconds start again from zero: the busy share follows the child from the fork on.
        os.register_at_fork(after_in_child=self._follow_forked_child)
        self.module = nvml = autospec_pynvml()
        nvml.nvmlDeviceGetCount.return_value = 1
        nvml.nvmlDeviceGetArchitecture.return_value = pynvml.NVML_DEVICE_ARCH_HOPPER
        nvml.nvmlDeviceGetName.return_value = "NVIDIA H200 (SIMULATED)"
        nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = self.counter_mj
        nvml.nvmlDeviceGetFieldValues.side_effect = self.instant_power
        nvml.nvmlDeviceGetPowerUsage.side_effect = self.power_usage_mw

    def _follow_forked_child(self) -> None:
        self.updated, self.cpu = time.time(), own_cpu_seconds()

    def _advance(self) -> float:
        """Integrate the power model up to now; returns the watts of the span just integrated."""
        now, cpu = time.time(), own_cpu_seconds()
        span = now - self.updated
        watts = self.idle_w
        if span > 0:
            watts += self.busy_w * (cpu - self.cpu) / (span * self.cores)
            self.joules += watts * span
        self.updated, self.cpu = now, cpu
        return watts

    def counter_mj(self, handle) -> int:
        """The counter as of its last update, a multiple of COUNTER_PERIOD_S (interpolated)."""
        watts = self._advance()
        since_tick = self.updated % COUNTER_PERIOD_S
        return int((self.joules - watts * since_tick) * 1000)

    def instant_power(self, handle, fields):
        watts = self._advance()
        return [SimpleNamespace(nvmlReturn=pynvml.NVML_SUCCESS, value=SimpleNamespace(uiVal=watts * 1000))]

    def power_usage_mw(self, handle) -> int:
        """nvmlDeviceGetPowerUsage: the power model's watts now, in mW."""
        return int(self._advance() * 1000)
