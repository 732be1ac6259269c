"""Whether Zeus can meter the GPU a rule computes on (joulebench.devices.Placement).

Each rule meters the devices it computes on, no more: a rule that runs on the CPU must not book an
idle GPU's draw as its own, and a GPU that does the work must be metered or, where NVML cannot read
it, estimated and said so. `Placement` is that decision: the torch device the tensors live on and
the CUDA index of the GPU doing the work (None on the CPU). `probe_gpu` then asks Zeus (through
NVML) whether that GPU can be read, and turns every way it cannot into a reason in the record
instead of a crash:

- CUDA_VISIBLE_DEVICES given as GPU UUIDs (as some schedulers set it): Zeus only parses integers,
  so the UUIDs are translated to NVML indices while Zeus reads the variable;
- CUDA and NVML numbering GPUs differently (CUDA puts the fastest first unless
  CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML goes by PCI bus): the GPU whose NVML UUID is the one torch
  gives the rule's device is metered (`GpuAccess.index`); where Zeus reads no GPU of that UUID,
  the GPU is estimated;
- a MIG slice, whether CUDA_VISIBLE_DEVICES names it (Zeus refuses those) or a container runtime
  shows it as device 0 (NVML says the GPU is in MIG mode, or the device name says MIG): NVML's
  energy counter covers the whole GPU, every slice's tenants, so the slice is estimated at its
  share of the board;
- ZEUSD_SOCK_PATH or ZEUSD_HOST_PORT naming a Zeus daemon that is down or refuses Zeus: the
  reason names the daemon's address and what to do;
- NVML errors such as NVML_ERROR_NO_PERMISSION: ZeusMonitor catches only ZeusGPUInitError and
  would raise the rest again when constructed, so the GPU singleton is set to "no GPUs" and the
  rule goes on with its CPU counters and a labelled GPU estimate.

A metered GPU's record also says whether NVML's instant power is readable (Zeus reads it at each
window's end to approximate a window its energy counter did not tick in; old drivers and vGPUs
lack it) and the power limit in
force beside the default, so a limit left set by an earlier job shows in every record.

A GPU that NVML sees but torch cannot use (a driver older than the wheel needs) is never the
rule's device: training falls back to the CPU, so the placement says CPU and no GPU is metered.
"""

import csv
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from joulebench.devices import Placement

log = logging.getLogger(__name__)


# Board power of common GPUs, for estimating a GPU that NVML cannot read (Green Algorithms' GPU
# term: usage x board power). The table cites its sources in its header.
BOARD_POWER_TABLE = Path(__file__).resolve().parents[3] / "resources" / "gpu_board_power.csv"


# Compute slices of a whole A100/H100/H200 in MIG mode ("1g.10gb" is one of seven).
MIG_COMPUTE_SLICES = 7


# A MIG slice's profile in the device name CUDA gives it ("NVIDIA A100-SXM4-40GB MIG 2g.10gb").
MIG_PROFILE = r"MIG (\d+)g\."


@dataclass(frozen=True)
class GpuAccess:
    """Whether the placement's GPU can be metered; `reason` says why not.

    `index` is the GPU's index among Zeus's GPUs (ZeusMonitor's gpu_indices), None where it is not
    metered. `instant_power` says whether NVML's instant power field is readable (what Zeus reads
    for windows its energy counter did not tick in). `power_limit_w` and `default_power_limit_w`
    are the limit in force and the board's default, None where NVML does not give them.
    """

    used: bool
    metered: bool = False
    reason: str | None = None
    name: str | None = None
    index: int | None = None
    instant_power: bool = False
    power_limit_w: float | None = None
    default_power_limit_w: float | None = None
    mig: bool = False

    @property
    def power_limit_capped(self) -> bool | None:
        """Whether the limit in force differs from the default (a limit left set by an earlier job
        changes what the GPU draws); None where either is unknown."""
        if self.power_limit_w is None or self.default_power_limit_w is None:
            return None
        return self.power_limit_w != self.default_power_limit_w

    def describe(self) -> dict:
        return asdict(self) | {"power_limit_capped": self.power_limit_capped}


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


def torch_gpu_uuid(placement: Placement) -> str | None:
    """The UUID CUDA gives the placement's GPU ("GPU-" left off, as torch prints it), or None where
    the rule's tensors are not on a CUDA device (then CUDA's and NVML's orders cannot be compared)."""
    if placement.torch_device.type != "cuda":
        return None
    return str(torch.cuda.get_device_properties(placement.torch_device).uuid)


def _nvml_uuid(gpu) -> str | None:
    from zeus.device.gpu import nvidia

    try:
        return nvidia.pynvml.nvmlDeviceGetUUID(gpu.handle)
    except nvidia.pynvml.NVMLError as error:
        log.warning("NVML did not give the UUID of GPU %d: %s", gpu.gpu_index, error)
        return None


def _same_uuid(nvml_uuid: str | None, cuda_uuid: str) -> bool:
    return (
        nvml_uuid is not None
        and nvml_uuid.removeprefix("GPU-").lower() == cuda_uuid.removeprefix("GPU-").lower()
    )


def _zeus_index(gpus, placement: Placement) -> tuple[int | None, str | None]:
    """(index among Zeus's GPUs of the GPU torch computes on, None) or (None, why it has none).

    CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML (and so Zeus) by PCI
    bus: on a host with unlike GPUs, CUDA index 0 may be NVML's GPU 1. The UUIDs settle it."""
    from zeus.device.gpu.nvidia import NVIDIAGPUs

    cuda_uuid = torch_gpu_uuid(placement)
    if cuda_uuid is None or not isinstance(gpus, NVIDIAGPUs):
        if placement.gpu < len(gpus):
            return placement.gpu, None
        return None, f"CUDA index {placement.gpu} is not among the {len(gpus)} GPUs NVML sees"
    for index, gpu in enumerate(gpus.gpus):
        if _same_uuid(_nvml_uuid(gpu), cuda_uuid):
            if index != placement.gpu:
                log.warning(
                    "CUDA's GPU %d is NVML's GPU %d (by UUID): metering that one", placement.gpu, index
                )
            return index, None
    return None, (
        f"no GPU Zeus reads has the UUID of CUDA's GPU {placement.gpu} (GPU-{cuda_uuid}): CUDA and NVML "
        "number GPUs differently unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and CUDA_VISIBLE_DEVICES is "
        "read in CUDA's order; set CUDA_DEVICE_ORDER=PCI_BUS_ID to meter it"
    )


def _in_mig_mode(gpus, index: int) -> bool:
    """Whether NVML says the GPU runs in MIG mode (a GPU without MIG answers NOT_SUPPORTED)."""
    from zeus.device.gpu import nvidia

    if not isinstance(gpus, nvidia.NVIDIAGPUs):
        return False
    pynvml = nvidia.pynvml
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(gpus.gpus[index].handle)
    except pynvml.NVMLError:
        return False
    return current == pynvml.NVML_DEVICE_MIG_ENABLE


def _mig_access(placement: Placement) -> GpuAccess:
    """A MIG slice: NVML's counter is the whole GPU's, so the slice is estimated at its share."""
    name = gpu_name(placement)
    if re.search(MIG_PROFILE, name):
        slices = round(mig_share(name) * MIG_COMPUTE_SLICES)
        share = f"estimated at its share of the board ({slices}/{MIG_COMPUTE_SLICES})"
    else:
        # mig_share cannot tell the slice's size: the estimate takes the whole board, an upper bound.
        share = f"its slice profile is unknown (the device is named '{name}'): estimated at the whole board"
    reason = (
        "MIG slice: NVML's energy counter covers the whole GPU, the tenants of every slice, "
        f"so the slice is not metered; {share}"
    )
    return GpuAccess(True, reason=reason, name=name or None, mig=True)


def _zeusd_failure(error) -> str | None:
    """Why Zeus's GPUs could not start when the Zeus daemon is what failed, else None."""
    from zeus.utils.zeusd import ZeusdConfig, ZeusdConnectionError

    config = ZeusdConfig.from_env()
    if config is None or error.__cause__ is None:
        return None
    variable = "ZEUSD_SOCK_PATH" if config.socket_path is not None else "ZEUSD_HOST_PORT"
    what = "is unreachable" if isinstance(error.__cause__, ZeusdConnectionError) else "refused Zeus"
    return (
        f"the Zeus daemon at {config.endpoint} ({variable}) {what}: {error.__cause__}; start zeusd there, "
        f"or unset {variable} so that Zeus reads NVML itself (setting power limits then needs SYS_ADMIN)"
    )


def _readable(read, index: int) -> bool:
    from zeus.device.gpu.common import ZeusBaseGPUError

    try:
        read(index)
    except ZeusBaseGPUError as error:
        log.info("GPU %d: %s is not readable (%s)", index, read.__name__, error)
        return False
    return True


def _power_limits(gpus, index: int) -> dict:
    """The power limit in force and the default one, in W; None where NVML does not give one."""
    from zeus.device.gpu import nvidia
    from zeus.device.gpu.common import ZeusBaseGPUError

    limits = {"power_limit_w": None, "default_power_limit_w": None}
    if not isinstance(gpus, nvidia.NVIDIAGPUs):
        return limits
    try:
        limits["power_limit_w"] = gpus.get_power_management_limit(index) / 1000
    except ZeusBaseGPUError as error:
        log.info("GPU %d: no power limit from NVML (%s)", index, error)
    try:
        handle = gpus.gpus[index].handle
        limits["default_power_limit_w"] = (
            nvidia.pynvml.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000
        )
    except nvidia.pynvml.NVMLError as error:
        log.info("GPU %d: no default power limit from NVML (%s)", index, error)
    return limits


def probe_gpu(placement: Placement) -> GpuAccess:
    """Initialise Zeus's GPU layer once (always: ZeusMonitor needs it, CPU-only rules too) and tell
    whether the placement's GPU can be metered. Never raises for a GPU that cannot be read."""
    import zeus.device.gpu
    from zeus.device.gpu.common import EmptyGPUs, ZeusBaseGPUError, ZeusGPUInitError

    used = placement.gpu is not None
    try:
        with _integer_visible_devices():
            gpus = zeus.device.gpu.get_gpus()
    except ZeusGPUInitError as error:
        # ZeusMonitor catches this one itself. Zeus refuses CUDA_VISIBLE_DEVICES naming MIG slices.
        if not used:
            return GpuAccess(False)
        if any(token.startswith("MIG") for token in _visible_tokens()):
            return _mig_access(placement)
        return GpuAccess(True, reason=_zeusd_failure(error) or f"no NVML: {error}")
    except (ZeusBaseGPUError, ValueError) as error:
        zeus.device.gpu._gpus = EmptyGPUs()  # else ZeusMonitor raises the same error again
        log.warning("NVML cannot be used (%s): no GPU is metered on this host", error)
        return GpuAccess(used, reason=f"NVML error: {error}")
    if not used:
        return GpuAccess(False)
    index, unmatched = _zeus_index(gpus, placement)
    # A slice the container runtime shows as device 0 is found by asking NVML, not the variable.
    mig_candidate = index if index is not None else placement.gpu
    in_mig_mode = mig_candidate < len(gpus) and _in_mig_mode(gpus, mig_candidate)
    if in_mig_mode or re.search(r"\bMIG\b", gpu_name(placement)):
        return _mig_access(placement)
    if index is None:
        return GpuAccess(True, reason=unmatched)
    try:
        name = gpus.get_name(index)
        if gpus.supports_get_total_energy_consumption(index):
            gpus.get_total_energy_consumption(index)
            instant_power = _readable(gpus.get_instant_power_usage, index)
        else:
            gpus.get_instant_power_usage(index)  # what Zeus's PowerMonitor polls before Volta
            instant_power = True
    except ZeusBaseGPUError as error:
        zeus.device.gpu._gpus = EmptyGPUs()
        log.warning("NVML cannot read GPU %d (%s): it is estimated, not metered", index, error)
        return GpuAccess(True, reason=f"NVML error reading GPU {index}: {error}")
    access = GpuAccess(
        True, metered=True, name=name, index=index, instant_power=instant_power, **_power_limits(gpus, index)
    )
    if access.power_limit_capped:
        log.info(
            "GPU %d runs at a %s W power limit, not its default %s W",
            index,
            access.power_limit_w,
            access.default_power_limit_w,
        )
    return access


def gpu_name(placement: Placement) -> str:
    return torch.cuda.get_device_name(placement.torch_device) if placement.torch_device.type == "cuda" else ""


def mig_share(name: str) -> float:
    """The share of the whole GPU a MIG slice computes on ("... MIG 2g.20gb" -> 2/7); 1 otherwise."""
    match = re.search(MIG_PROFILE, name)
    return int(match.group(1)) / MIG_COMPUTE_SLICES if match else 1.0


def board_power_w(name: str) -> tuple[float, str] | None:
    """(watts, source) of the first table row whose key occurs in the GPU's name, or None."""
    with open(BOARD_POWER_TABLE) as handle:
        rows = [row for row in csv.DictReader(line for line in handle if not line.startswith("#"))]
    for row in rows:
        if row["name_contains"].lower() in name.lower():
            return float(row["board_power_w"]), row["source"]
    return None
