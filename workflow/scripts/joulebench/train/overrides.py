"""How a from-scratch variant changes the baseline's training recipe (the hardware axis).

- `technique: batch_size`: another batch size, with the learning rate scaled from the baseline's
  (`training.lr` at `training.batch_size`): linear, lr x (N / base) (Goyal et al., 2017), or sqrt,
  lr x sqrt(N / base) (Krizhevsky, 2014; Hoffer et al., 2017 for adaptive optimizers);
- `technique: threads`: the CPU threads torch computes with (torch.set_num_threads);
- `technique: power_limit`: the baseline recipe under a GPU power limit (joulebench.train.power_limit);
- `technique: device`: the baseline recipe pinned to `device` (cpu or cuda).

Everything else is the baseline's recipe, so a difference in the report is the technique's.

Where a variant computes is a key of its own, `device`, not only a technique: a device comparison
is rarely just "the baseline elsewhere"; the question is as often "bf16 on the CPU" or "batch 256 on
the GPU", so `device` may pin any single-process from-scratch variant (precision, subset, finetune,
batch_size, threads, device) and combines with what that variant changes. `technique: device`
exists for the plain baseline recipe, which needs a variant name to sit beside the baseline.
Unpinned variants (and the baseline) run on `devices.accelerator()`. Not pinnable: power_limit
(always the GPU), data_parallel (its workers place themselves, joulebench.train.distributed) and the
variants made from a parent (prune, quantize, distill), which run where their parent was pinned.
A `cuda` pin on a host without a usable GPU skips the variant, as a power limit is skipped
(joulebench.train.stages.write_skipped), instead of quietly training it on the CPU.
"""

import math

LR_EXPONENTS = {"linear": 1.0, "sqrt": 0.5}


def scaled_lr(base_lr: float, base_batch_size: int, batch_size: int, scaling: str) -> float:
    """base_lr x (batch_size / base_batch_size) ** e, e = 1 (linear) or 0.5 (sqrt)."""
    return base_lr * math.pow(batch_size / base_batch_size, LR_EXPONENTS[scaling])


def training_overrides(variant: dict, training: dict) -> dict:
    """The TrainSettings fields a from-scratch variant changes (empty for the baseline recipe)."""
    if variant.get("technique") != "batch_size":
        return {}
    batch_size = variant["batch_size"]
    lr = scaled_lr(training["lr"], training["batch_size"], batch_size, variant["lr_scaling"])
    return {"batch_size": batch_size, "lr": lr}


def cpu_threads(variant: dict) -> int | None:
    """The torch CPU threads a `threads` variant trains with; None: the threads the job was given."""
    return variant.get("threads") if variant.get("technique") == "threads" else None


def pinned_device(variant: dict) -> str | None:
    """The device (cpu, cuda) a variant's `device` key pins it to; None: wherever the baseline runs."""
    return variant.get("device")


def needs_gpu(variant: dict) -> bool:
    """Whether the variant cannot run without a GPU (it is skipped on a host without one)."""
    return variant.get("technique") == "power_limit" or pinned_device(variant) == "cuda"
