"""Atomic writes and safe loads: a reader never sees a half-written result file."""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename tmp_path onto path (atomic on one filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_csv(path, frame) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_tensors(path, tensors: dict) -> None:
    """torch.save through an open handle: given a path, torch names the archive's records after
    the (random) temp file, so the same tensors would give different bytes on every rerun."""

    def write(tmp):
        with open(tmp, "wb") as handle:
            torch.save(tensors, handle)

    write_atomic(path, write)


def load_tensors(path, allow: tuple = ()) -> dict:
    """Load tensors with weights_only, so a checkpoint can never run code when loaded.

    `allow` names extra tensor classes (quantized tensor subclasses) the file may contain.
    """
    with torch.serialization.safe_globals(list(allow)):
        return torch.load(path, map_location="cpu", weights_only=True)


def save_arrays(path, arrays: dict) -> None:
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    write_atomic(path, write)


def load_arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
