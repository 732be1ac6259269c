"""SIMULATED GPU + RAPL host for tests: imported by every Python process whose PYTHONPATH starts with
this folder, while JOULEBENCH_SIMULATED_HOST names the folder of its RAPL tree.

Nothing here runs on a real host. It patches modules as they are imported:
- zeus.device.gpu.nvidia's pynvml -> SimulatedNVML (one H200, power model in nvml.py), and
  zeus.device.gpu.nvml_is_available -> True, as Zeus's own tests do;
- zeus.device.cpu.rapl.RAPL_DIR -> the powercap tree that rapl_writer.py keeps moving (Zeus's
  real RAPL classes read it, and its real wrap-around tracker process is spawned);
- joulebench.devices.accelerator -> "GPU 0 does the work" while torch computes on the CPU, its
  stand-in. Its Placement.synchronize stands in for CUDA's sync, and fails as CUDA does in a
  process that inherited a started CUDA driver: torch's real fork guard (armed wherever something
  queried CUDA before a fork, `torch.cuda._is_in_bad_fork()` in the child) decides, so a job forked
  from a process that touched CUDA breaks here as it would on an NVIDIA host.
Power model parameters come from the environment (SIMULATED_GPU_IDLE_W, SIMULATED_GPU_BUSY_W).
"""

import importlib.abc
import importlib.util
import os
import sys

HOST_DIR = os.environ.get("JOULEBENCH_SIMULATED_HOST")


def _nvidia(module):
    sys.path.insert(0, os.path.dirname(__file__))
    from nvml import SimulatedNVML

    idle, busy = float(os.environ["SIMULATED_GPU_IDLE_W"]), float(os.environ["SIMULATED_GPU_BUSY_W"])
    module.pynvml = SimulatedNVML(idle, busy).module


def _gpu(module):
    module.nvml_is_available = lambda: True


def _rapl(module):
    module.RAPL_DIR = os.path.join(HOST_DIR, "intel-rapl")


# What torch.cuda raises on first use in a process forked after the CUDA driver started.
BAD_FORK = (
    "Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use "
    "the 'spawn' start method"
)


def _devices(module):
    import torch

    class SimulatedGpuPlacement(module.Placement):
        def synchronize(self) -> None:
            if torch.cuda._is_in_bad_fork():
                raise RuntimeError(BAD_FORK)

    simulated_gpu = SimulatedGpuPlacement(torch.device("cpu"), 0)
    module.accelerator = lambda: simulated_gpu


PATCHES = {
    "zeus.device.gpu.nvidia": _nvidia,
    "zeus.device.gpu": _gpu,
    "zeus.device.cpu.rapl": _rapl,
    "joulebench.devices": _devices,
}


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs PATCHES[name] on a module right after its own code ran."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if HOST_DIR:
    sys.meta_path.insert(0, PatchOnImport())
