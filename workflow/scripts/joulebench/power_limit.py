"""A GPU power limit held for the duration of a training run, always given back.

`technique: power_limit` trains the baseline recipe with the job's GPU capped at `power_limit_w`
watts, or at `power_limit_fraction` of the largest limit the GPU allows. The limit goes through
Zeus's GPU layer (`set_power_management_limit`, NVML underneath, or the Zeus daemon where
ZEUSD_SOCK_PATH / ZEUSD_HOST_PORT is set) and is reset to the GPU's default
(`reset_power_management_limit`) on every way out: success, an exception, or SIGTERM, which
`checkpoint.exit_on_sigterm` turns into an exception (the caller must hold it around this).

Setting a power limit needs the SYS_ADMIN capability; without it the variant stops before any
training with a message saying how to get it. Without a GPU there is nothing to limit: the rule
writes a skipped marker instead (joulebench.stages), which the report lists.
"""

import logging
from contextlib import contextmanager

from joulebench.devices import Placement, probe_gpu

log = logging.getLogger(__name__)

NO_GPU = "no GPU on this host"
PRIVILEGES = (
    "setting a GPU power limit needs the SYS_ADMIN capability: run the job as root, or run the "
    "Zeus daemon (zeusd) as root and set ZEUSD_SOCK_PATH (its socket; or ZEUSD_HOST_PORT, plus "
    "ZEUSD_TOKEN if it asks for one) in the job's environment, "
    "see https://ml.energy/zeus/getting_started/#system-privileges"
)


class PowerLimitError(RuntimeError):
    """A power limit that cannot be applied, with what to do about it."""


def requested_mw(variant: dict, allowed_mw: tuple[int, int]) -> int:
    """The limit the variant asks for, in mW; refused (naming the allowed range) outside it."""
    low, high = allowed_mw
    if "power_limit_w" in variant:
        asked, key = variant["power_limit_w"] * 1000, f"power_limit_w: {variant['power_limit_w']} W"
    else:
        fraction = variant["power_limit_fraction"]
        asked, key = fraction * high, f"power_limit_fraction: {fraction} of {high / 1000:g} W"
    asked = round(asked)
    if not low <= asked <= high:
        raise PowerLimitError(
            f"{key} = {asked / 1000:g} W is outside the range this GPU allows, "
            f"{low / 1000:g}-{high / 1000:g} W; choose a limit within it"
        )
    return asked


@contextmanager
def held_power_limit(placement: Placement, variant: dict):
    """Set the variant's power limit on the placement's GPU; yield what was applied; reset it.

    Yields {"power_limit": {...}} for the energy record and training.json.
    """
    import zeus.device.gpu
    from zeus.device.gpu.common import ZeusGPUNoPermissionError

    if placement.gpu is None:
        raise PowerLimitError(f"cannot set a power limit: {NO_GPU}")
    access = probe_gpu(placement)  # initialises Zeus's GPUs the way the meter will see them
    if not access.metered:
        raise PowerLimitError(f"cannot set a power limit on GPU {placement.gpu}: {access.reason}")
    gpus = zeus.device.gpu.get_gpus()
    index = placement.gpu
    allowed = tuple(gpus.get_power_management_limit_constraints(index))
    limit_mw = requested_mw(variant, allowed)
    try:
        gpus.set_power_management_limit(index, limit_mw)
    except ZeusGPUNoPermissionError as error:
        raise PowerLimitError(f"GPU {index}: {error}; {PRIVILEGES}") from None
    log.info("GPU %d power limit set to %g W (allowed %s mW)", index, limit_mw / 1000, allowed)
    applied = {
        "power_limit": {
            "gpu_cuda_index": index,
            "gpu_name": access.name,
            "applied_w": limit_mw / 1000,
            "allowed_w": [allowed[0] / 1000, allowed[1] / 1000],
            "requested": {k: variant[k] for k in ("power_limit_w", "power_limit_fraction") if k in variant},
        }
    }
    try:
        yield applied
    finally:
        try:
            gpus.reset_power_management_limit(index)
            log.info("GPU %d power limit reset to its default", index)
        except Exception:
            log.exception(
                "GPU %d: resetting the power limit failed; reset it by hand (nvidia-smi -i <index> -pl "
                "<default watts>, the default is in nvidia-smi -q -d POWER)",
                index,
            )
            raise
