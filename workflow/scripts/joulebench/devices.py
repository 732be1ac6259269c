"""Where a rule computes, and whether Zeus can meter that device.

Each rule meters the devices it computes on, no more: a rule that runs on the CPU must not book an
idle GPU's draw as its own, and a GPU that does the work must be metered or, where NVML cannot read
it, estimated and said so. `Placement` is that decision: the torch device the tensors live on and
the CUDA index of the GPU doing the work (None on the CPU). `probe_gpu` then asks Zeus (through
NVML) whether that GPU can be read, and turns every way it cannot into a reason in the record
instead of a crash:

- CUDA_VISIBLE_DEVICES given as GPU UUIDs (as some schedulers set it): Zeus only parses integers,
  so the UUIDs are translated to NVML indices while Zeus reads the variable;
- CUDA_VISIBLE_DEVICES naming MIG slices: NVML cannot meter a slice (Zeus refuses them);
- NVML errors such as NVML_ERROR_NO_PERMISSION: ZeusMonitor catches only ZeusGPUInitError and
  would raise the rest again when constructed, so the GPU singleton is set to "no GPUs" and the
  rule goes on with its CPU counters and a labelled GPU estimate.

A GPU that NVML sees but torch cannot use (a driver older than the wheel needs) is never the
rule's device: training falls back to the CPU, so the placement says CPU and no GPU is metered.
"""

import csv
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Board power of common GPUs, for estimating a GPU that NVML cannot read (Green Algorithms' GPU
# term: usage x board power). The table cites its sources in its header.
BOARD_POWER_TABLE = Path(__file__).resolve().parents[2] / "resources" / "gpu_board_power.csv"
# Compute slices of a whole A100/H100/H200 in MIG mode ("1g.10gb" is one of seven).
MIG_COMPUTE_SLICES = 7


@dataclass(frozen=True)
class Placement:
    """Where a rule computes: the torch device of its tensors, and the CUDA index of the GPU doing
    the work (None when the work runs on the CPU only)."""

    torch_device: torch.device
    gpu: int | None

    def synchronize(self) -> None:
        """Wait for queued kernels, so a window's edges enclose the work it launched."""
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    @property
    def device(self) -> str:
        """The kind of device doing the work, as reports name it: cuda where a GPU does, else cpu."""
        return "cpu" if self.gpu is None else "cuda"

    def describe(self) -> dict:
        return {"device": self.device, "torch_device": str(self.torch_device), "gpu_cuda_index": self.gpu}


CPU = Placement(torch.device("cpu"), None)


def accelerator() -> Placement:
    """The GPU where torch can use one (the job's first visible GPU), else the CPU."""
    if torch.cuda.is_available():
        return Placement(torch.device("cuda", 0), 0)
    return CPU


def placement_on(device: str | None) -> Placement:
    """Where a model pinned to `device` computes (joulebench.recipes.pinned_device): the CPU for
    `cpu`, else the accelerator. A `cuda` pin on a host without a GPU gets the CPU here: callers
    skip such a variant before computing (recipes.needs_gpu), never run it there."""
    return CPU if device == "cpu" else accelerator()


@dataclass(frozen=True)
class GpuAccess:
    """Whether the placement's GPU can be metered; `reason` says why not."""

    used: bool
    metered: bool = False
    reason: str | None = None
    name: str | None = None

    def describe(self) -> dict:
        return {"used": self.used, "metered": self.metered, "reason": self.reason, "name": self.name}


def _visible_tokens() -> list[str]:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [token.strip() for token in value.split(",")] if value else []


def _uuids_to_indices(tokens: list[str]) -> str:
    """NVML indices of GPUs named by (full or prefix) UUID, as CUDA accepts them."""
    from zeus.device.gpu import nvidia

    pynvml = nvidia.pynvml
    pynvml.nvmlInit()
    uuids = [
        pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
        for i in range(pynvml.nvmlDeviceGetCount())
    ]
    indices = []
    for token in tokens:
        matches = [index for index, uuid in enumerate(uuids) if uuid.startswith(token)]
        if len(matches) != 1:
            raise ValueError(f"CUDA_VISIBLE_DEVICES entry {token} matches {len(matches)} GPUs known to NVML")
        indices.append(str(matches[0]))
    return ",".join(indices)


@contextmanager
def _integer_visible_devices():
    """Zeus parses CUDA_VISIBLE_DEVICES as integers only; show it NVML indices while it reads it."""
    tokens = _visible_tokens()
    if not any(token.startswith("GPU-") for token in tokens):
        yield
        return
    original = os.environ["CUDA_VISIBLE_DEVICES"]
    os.environ["CUDA_VISIBLE_DEVICES"] = _uuids_to_indices(tokens)
    try:
        yield
    finally:
        os.environ["CUDA_VISIBLE_DEVICES"] = original


def probe_gpu(placement: Placement) -> GpuAccess:
    """Initialise Zeus's GPU layer once (always: ZeusMonitor needs it, CPU-only rules too) and tell
    whether the placement's GPU can be metered. Never raises for a GPU that cannot be read."""
    import zeus.device.gpu
    from zeus.device.gpu.common import EmptyGPUs, ZeusBaseGPUError, ZeusGPUInitError

    used = placement.gpu is not None
    mig = [token for token in _visible_tokens() if token.startswith("MIG")]
    try:
        with _integer_visible_devices():
            gpus = zeus.device.gpu.get_gpus()
    except ZeusGPUInitError as error:
        # No NVML at all (this is also how Zeus refuses MIG slices).
        reason = "MIG slice: NVML cannot meter a slice of a GPU" if mig else f"no NVML: {error}"
        return GpuAccess(used, reason=reason if used else None)
    except (ZeusBaseGPUError, ValueError) as error:
        zeus.device.gpu._gpus = EmptyGPUs()  # else ZeusMonitor raises the same error again
        log.warning("NVML cannot be used (%s): no GPU is metered on this host", error)
        return GpuAccess(used, reason=f"NVML error: {error}")
    if not used:
        return GpuAccess(False)
    if placement.gpu >= len(gpus):
        return GpuAccess(
            True, reason=f"CUDA index {placement.gpu} is not among the {len(gpus)} GPUs NVML sees"
        )
    try:
        name = gpus.get_name(placement.gpu)
        if gpus.supports_get_total_energy_consumption(placement.gpu):
            gpus.get_total_energy_consumption(placement.gpu)
        else:
            gpus.get_instant_power_usage(placement.gpu)
    except ZeusBaseGPUError as error:
        zeus.device.gpu._gpus = EmptyGPUs()
        log.warning("NVML cannot read GPU %d (%s): it is estimated, not metered", placement.gpu, error)
        return GpuAccess(True, reason=f"NVML error reading GPU {placement.gpu}: {error}")
    return GpuAccess(True, metered=True, name=name)


def gpu_name(placement: Placement) -> str:
    return torch.cuda.get_device_name(placement.torch_device) if placement.torch_device.type == "cuda" else ""


def mig_share(name: str) -> float:
    """The share of the whole GPU a MIG slice computes on ("... MIG 2g.20gb" -> 2/7); 1 otherwise."""
    match = re.search(r"MIG (\d+)g\.", name)
    return int(match.group(1)) / MIG_COMPUTE_SLICES if match else 1.0


def board_power_w(name: str) -> tuple[float, str] | None:
    """(watts, source) of the first table row whose key occurs in the GPU's name, or None."""
    with open(BOARD_POWER_TABLE) as handle:
        rows = [row for row in csv.DictReader(line for line in handle if not line.startswith("#"))]
    for row in rows:
        if row["name_contains"].lower() in name.lower():
            return float(row["board_power_w"]), row["source"]
    return None
