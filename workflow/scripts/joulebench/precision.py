"""Precision as one switch: the dtype autocast computes in, what a device supports, the numeric flags
in force, and an out-of-memory error that says what to lower."""

import os
import re
from contextlib import contextmanager

import torch
from torch import nn

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def numeric_flags() -> dict:
    """The settings that decide how this process computes on a GPU, as they stand now: cuDNN's
    algorithm choice, TF32 for matmuls and convolutions, deterministic algorithms and cuBLAS's
    workspace (which deterministic cuBLAS needs). Reading them does not touch CUDA."""
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_algorithms_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


# The errors that mean "this device cannot compute in this dtype": torch.autocast's own refusal
# (torch/amp/autocast_mode.py, a CUDA GPU without bf16) and a kernel with no half-precision
# implementation on this build ("addmm_impl_cpu_" not implemented for 'Half'). Any other error
# (a CUDA context that cannot start, an out-of-memory) is not about the dtype and propagates.
UNSUPPORTED_DTYPE = re.compile(
    r"Current CUDA Device does not support bfloat16|not implemented for '(Half|BFloat16)'"
)


def effective_precision(requested: str, device: torch.device) -> str:
    """The precision autocast really computes in on this device, found by running it.

    fp16 autocast is not supported on every CPU build; there we fall back to bf16 and say so.
    """
    for name in (requested, "bf16", "fp32") if requested == "fp16" else (requested, "fp32"):
        dtype = PRECISIONS[name]
        if dtype is None:
            return "fp32"
        try:
            with torch.autocast(device.type, dtype=dtype):
                out = nn.Linear(4, 4).to(device)(torch.ones(2, 4, device=device))
        except RuntimeError as error:
            if not UNSUPPORTED_DTYPE.search(str(error)):
                raise
            continue
        if out.dtype is dtype:
            return name
    return "fp32"


class DeviceOutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the batch size and the setting to lower."""


@contextmanager
def out_of_memory_hint(device: torch.device, work: str, batch_size: int, setting: str):
    """Turn an allocation failure (CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError)
    into a DeviceOutOfMemory that says what ran out and what to change."""
    try:
        yield
    except RuntimeError as err:
        if not (isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)):
            raise
        raise DeviceOutOfMemory(
            f"out of memory on {device} during {work} with batch size {batch_size}; lower {setting} "
            f"(try {max(1, batch_size // 2)}) or use a smaller model or precision bf16"
        ) from err
