"""Where a rule computes: the torch device its tensors live on and the CUDA index of the GPU doing
the work (None on the CPU). Each rule meters the devices it computes on, no more: a rule that runs
on the CPU must not book an idle GPU's draw as its own (joulebench.energy.gpu_access says whether
the GPU can be metered)."""

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


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
    """Where a model pinned to `device` computes (joulebench.train.overrides.pinned_device): the CPU for
    `cpu`, else the accelerator. A `cuda` pin on a host without a GPU gets the CPU here: callers
    skip such a variant before computing (recipes.needs_gpu), never run it there."""
    return CPU if device == "cpu" else accelerator()
