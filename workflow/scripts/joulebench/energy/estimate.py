"""The Green Algorithms estimate (Lannelongue et al., 2021) for what no counter covers: CPU time x
power per core, memory x watts per GB, and a GPU term for a GPU NVML cannot read."""

from dataclasses import dataclass, field

from joulebench.devices import Placement
from joulebench.energy import cpu_power
from joulebench.energy.gpu_access import GpuAccess, board_power_w, gpu_name, mig_share
from joulebench.energy.inventory import cpu_model

ESTIMATE_MODEL = "green-algorithms"


# What an estimate counts, written into each one: the figure is the process's own share, with no
# idle host and no facility overhead (docs/trackers.md converts it to what other trackers print).
ESTIMATE_SCOPE = {
    "memory_counted": "peak RSS of the process (Green Algorithms counts the memory available to the job)",
    "idle_power_included": False,
    "pue_included": False,
}


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
