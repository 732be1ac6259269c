"""A GPU power limit held for the duration of a training run, then the one found put back.

`technique: power_limit` trains the baseline recipe with the job's GPU capped at `power_limit_w`
watts, or at `power_limit_fraction` of the largest limit the GPU allows. The limit goes through
Zeus's GPU layer (`set_power_management_limit`, NVML underneath, or the Zeus daemon where
ZEUSD_SOCK_PATH / ZEUSD_HOST_PORT is set). Before setting anything the limit in force is read,
and exactly that limit is set back on every way out: success, an exception, or SIGTERM, which
`checkpoint.exit_on_sigterm` turns into an exception (the caller must hold it around this). A
site cap (say 500 W on a 700 W GPU) therefore stays in force across power_limit jobs. The records
name both: `power_limit.previous_w` (found) and `restored_w` (put back; a restore that fails
stops the job with the `nvidia-smi` command that puts the limit back by hand).

With `optimizer: global`, Zeus's GlobalPowerLimitOptimizer chooses the limit during training
instead (GlobalSearch), on the rule's own ZeusMonitor; the same restore applies, persistence mode
(which the optimizer turns on) is put back too, and the optimizer's exit hook (which would set
the largest limit) is disarmed, so the previous limit is what stays after the process ends.

A SIGKILL (or an out-of-memory kill, or a node losing power mid-job) runs none of this: the
variant's limit stays on the GPU until someone resets it. The next power_limit job cannot tell
such a leftover from a site cap, so it keeps and restores whatever it finds: it does NOT undo a
leftover. It logs a warning when the limit it finds differs from NVML's default, naming the
command that resets the default; by hand, `nvidia-smi -q -d POWER` shows the default and current
limits and `nvidia-smi -i <index> -pl <watts>` sets one (as root).

Setting a power limit needs the SYS_ADMIN capability; without it the variant stops before any
training with a message saying how to get it. A GPU that NVML cannot read (a MIG slice) cannot be
limited either: the job stops and says why. Without a GPU there is nothing to limit: the rule
writes a skipped marker instead (joulebench.train.stages.write_skipped), which the report lists.
"""

import logging
from contextlib import contextmanager

from joulebench.devices import Placement
from joulebench.energy.gpu_access import probe_gpu

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
        asked = round(variant["power_limit_w"] * 1000)
        key = f"power_limit_w: {asked / 1000:g} W"
    else:
        fraction = variant["power_limit_fraction"]
        asked = round(fraction * high)
        key = f"power_limit_fraction: {fraction} of {high / 1000:g} W = {asked / 1000:g} W"
    if not low <= asked <= high:
        raise PowerLimitError(
            f"{key} is outside the range this GPU allows, "
            f"{low / 1000:g}-{high / 1000:g} W; choose a limit within it"
        )
    return asked


class HeldLimit:
    """What a power-limit context holds for a training run: the facts for its records, and the
    callback the training loop calls per step and epoch (None for a fixed limit)."""

    def __init__(self, facts: dict):
        self._facts = facts

    def callback(self, meter):
        return None

    def facts(self) -> dict:
        return {"power_limit": self._facts}


class GlobalSearch(HeldLimit):
    """Zeus's GlobalPowerLimitOptimizer on the rule's own ZeusMonitor: it profiles each power limit
    from the largest allowed down in `pl_step_w` steps (warm-up, then `profile_steps` training
    steps each; an epoch end interrupts a limit, which is then profiled again), and then holds the
    one with the least Zeus cost, eta x E + (1 - eta) x MaxPower x T. The profiling is part of the
    rule's energy: it is what using the optimizer costs."""

    def __init__(self, facts: dict, variant: dict):
        super().__init__(facts)
        self.variant = variant
        self.optimizer = None

    def callback(self, meter):
        from zeus.optimizer.power_limit import GlobalPowerLimitOptimizer, ZeusCost

        self.optimizer = GlobalPowerLimitOptimizer(
            meter.monitor,
            ZeusCost(eta_knob=self.variant["eta_knob"], world_size=1),
            warmup_steps=self.variant["warmup_steps"],
            profile_steps=self.variant["profile_steps"],
            pl_step=self.variant["pl_step_w"],
        )
        return self.optimizer

    def facts(self) -> dict:
        from zeus.optimizer.power_limit import Done

        state = self.optimizer.state if self.optimizer else None
        chosen = state.optimal_power_limit / 1000 if isinstance(state, Done) else None
        if chosen is None:
            log.warning(
                "the power-limit search did not finish: each limit needs %d warm-up + %d profiled steps "
                "within one epoch; lower warmup_steps/profile_steps or raise pl_step_w",
                self.variant["warmup_steps"],
                self.variant["profile_steps"],
            )
        profiled = [
            {"power_limit_w": m.power_limit, "gpu_joules": m.energy, "seconds": m.time}
            for m in (self.optimizer.measurements if self.optimizer else [])
        ]
        return {
            "power_limit": {
                **self._facts,
                "chosen_w": chosen,
                "finished": chosen is not None,
                "profiled": profiled,
            }
        }

    def disarm(self) -> None:
        """The optimizer registers an atexit hook that sets the largest limit again, but skips it
        when its own idea of the current limit already is that one; marking the largest limit as
        current makes the hook a no-op, so the previous limit, restored afterwards, stays."""
        if self.optimizer:
            self.optimizer.current_power_limit = max(self.optimizer.power_limits)


def _check_privileges(gpus, index: int) -> None:
    """SYS_ADMIN, or the Zeus daemon, before any training (the search sets limits mid-run)."""
    from zeus.device.common import has_sys_admin
    from zeus.device.gpu.nvidia import ZeusdNVIDIAGPU

    if not isinstance(gpus.gpus[index], ZeusdNVIDIAGPU) and not has_sys_admin():
        raise PowerLimitError(f"GPU {index}: {PRIVILEGES}")


def _watts(milliwatts: int) -> str:
    return f"{milliwatts / 1000:g}"


def _default_mw(gpus, index: int) -> int | None:
    """NVML's default limit for the GPU (None where NVML does not say); only for the log."""
    from zeus.device.gpu import nvidia

    try:
        return nvidia.pynvml.nvmlDeviceGetPowerManagementDefaultLimit(gpus.gpus[index].handle)
    except Exception as error:  # informational: an unreadable default must not stop the job
        log.debug("GPU %d: NVML's default power limit is unreadable: %s", index, error)
        return None


def _note_limit_in_force(index: int, nvml_index: int, previous_mw: int, default_mw: int | None) -> None:
    """A limit other than the default is kept: it may be a site cap. It may also be what a killed
    run left behind, which looks the same; the warning says how to reset that."""
    if default_mw is None or previous_mw == default_mw:
        return
    log.warning(
        "GPU %d: a power limit of %s W is in force (NVML's default is %s W); it is kept and restored "
        "after this run. If it is a leftover from a killed run rather than a site cap, reset it to "
        "the default: nvidia-smi -i %d -pl %s",
        index,
        _watts(previous_mw),
        _watts(default_mw),
        nvml_index,
        _watts(default_mw),
    )


def _restore_limit(gpus, index: int, nvml_index: int, previous_mw: int) -> None:
    """Set back the limit found before the run and check it took; say how to do it by hand if not."""
    by_hand = f"put it back by hand (as root): nvidia-smi -i {nvml_index} -pl {_watts(previous_mw)}"
    try:
        gpus.set_power_management_limit(index, previous_mw)
        now_mw = gpus.get_power_management_limit(index)
    except Exception as error:
        raise PowerLimitError(
            f"GPU {index}: restoring its previous power limit of {_watts(previous_mw)} W failed "
            f"({type(error).__name__}: {error}); {by_hand}"
        ) from error
    if now_mw != previous_mw:
        raise PowerLimitError(
            f"GPU {index}: its power limit is {_watts(now_mw)} W after restoring the previous "
            f"{_watts(previous_mw)} W; {by_hand}"
        )
    log.info("GPU %d power limit restored to %s W", index, _watts(previous_mw))


def _restore_persistence(gpus, index: int, nvml_index: int, enabled: bool) -> None:
    if gpus.get_persistence_mode(index) == enabled:
        return
    try:
        gpus.set_persistence_mode(index, enabled)
    except Exception:
        log.exception(
            "GPU %d: putting persistence mode back failed; by hand: nvidia-smi -i %d -pm %d",
            index,
            nvml_index,
            int(enabled),
        )
        raise


def training_conditions(variant: dict, placement: Placement) -> tuple[dict, object | None]:
    """What a training run holds while it trains: for a power_limit variant, the facts its
    checkpoint is tied to and its held limit (a context manager); nothing for any other variant."""
    if variant.get("technique") != "power_limit":
        return {}, None
    facts = {"power_limit": {k: v for k, v in variant.items() if k != "technique"}}
    return facts, held_power_limit(placement, variant)


@contextmanager
def held_power_limit(placement: Placement, variant: dict):
    """Hold the variant's power limit on the placement's GPU (fixed, or searched by Zeus's
    GlobalPowerLimitOptimizer with `optimizer: global`); yield a HeldLimit; on every way out set
    back the limit that was in force before.
    """
    import zeus.device.gpu
    from zeus.device.gpu.common import ZeusGPUNoPermissionError

    if placement.gpu is None:
        raise PowerLimitError(f"cannot set a power limit: {NO_GPU}")
    access = probe_gpu(placement)  # initialises Zeus's GPUs the way the meter will see them
    if not access.metered:
        raise PowerLimitError(f"cannot set a power limit on GPU {placement.gpu}: {access.reason}")
    gpus = zeus.device.gpu.get_gpus()
    index = access.index  # Zeus's index of the GPU torch computes on
    nvml_index = gpus.gpus[index].gpu_index  # what nvidia-smi -i means; CUDA's index may differ
    allowed = tuple(gpus.get_power_management_limit_constraints(index))
    # Read before anything is set: this, not NVML's default, is what every way out restores.
    previous_mw = gpus.get_power_management_limit(index)
    _note_limit_in_force(index, nvml_index, previous_mw, _default_mw(gpus, index))
    facts = {
        "gpu_cuda_index": index,
        "gpu_name": access.name,
        "allowed_w": [allowed[0] / 1000, allowed[1] / 1000],
        "previous_w": previous_mw / 1000,
        # The records are written only after a restore that took (a failed one stops the job).
        "restored_w": previous_mw / 1000,
    }
    search = variant.get("optimizer") == "global"
    # The search turns persistence mode on (Zeus's optimizer does); it is put back afterwards.
    persistence = gpus.get_persistence_mode(index) if search else None
    if search:
        _check_privileges(gpus, index)
        settings = ("eta_knob", "warmup_steps", "profile_steps", "pl_step_w")
        held = GlobalSearch({**facts, "optimizer": "global", **{k: variant[k] for k in settings}}, variant)
    else:
        limit_mw = requested_mw(variant, allowed)
        try:
            gpus.set_power_management_limit(index, limit_mw)
        except ZeusGPUNoPermissionError as error:
            raise PowerLimitError(f"GPU {index}: {error}; {PRIVILEGES}") from None
        log.info("GPU %d power limit set to %g W (allowed %s mW)", index, limit_mw / 1000, allowed)
        requested = {k: variant[k] for k in ("power_limit_w", "power_limit_fraction") if k in variant}
        held = HeldLimit({**facts, "applied_w": limit_mw / 1000, "requested": requested})
    try:
        yield held
    finally:
        if search:
            held.disarm()
        _restore_limit(gpus, index, nvml_index, previous_mw)
        if search:
            _restore_persistence(gpus, index, nvml_index, persistence)
