"""Atomic writes and safe loads: a reader never sees a half-written result file.

torch is imported where tensors are saved or loaded only: the report's environment has none.
"""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

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
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_csv(path, frame) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_tensors(path, tensors: dict) -> None:
    """torch.save through an open handle: given a path, torch names the archive's records after
    the (random) temp file, so the same tensors would give different bytes on every rerun."""
    import torch

    def write(tmp):
        with open(tmp, "wb") as handle:
            torch.save(tensors, handle)

    write_atomic(path, write)


def load_tensors(path, allow: tuple = ()) -> dict:
    """Load tensors with weights_only, so a checkpoint can never run code when loaded.

    `allow` names extra tensor classes (quantized tensor subclasses) the file may contain.
    """
    import torch

    with torch.serialization.safe_globals(list(allow)):
        return torch.load(path, map_location="cpu", weights_only=True)


def save_arrays(path, arrays: dict) -> None:
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    write_atomic(path, write)


def load_arrays(path) -> dict:
    """Every array of an .npz in memory; images stored as uint8 come back as float32 in [0, 1]."""
    with np.load(path, allow_pickle=False) as data:
        return _as_float_images({key: data[key] for key in data.files})


def _as_float_images(arrays: dict) -> dict:
    """Stored uint8 `<split>_x` images as float32 in [0, 1] (x / pixel_max), as they were decoded."""
    pixel_max = arrays.pop("pixel_max", None)
    if pixel_max is None:
        return arrays
    scale = np.float32(int(pixel_max))
    for key, value in arrays.items():
        if key.endswith("_x") and value.dtype == np.uint8:
            arrays[key] = value.astype(np.float32) / scale
    return arrays


def open_arrays(path) -> dict:
    """The arrays of an uncompressed .npz as stored (uint8 images stay uint8), each memory-mapped
    read-only where possible, so a split larger than memory is paged in as batches read it.

    np.savez stores every array as a plain .npy member of a ZIP file: its bytes sit at a fixed
    offset in the file, which np.memmap can map. Compressed or object members are read normally.
    """
    import zipfile

    arrays = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            # The local header's name and extra fields may differ from the central directory's.
            handle.seek(info.header_offset + 26)
            name_length, extra_length = np.frombuffer(handle.read(4), dtype="<u2")
            handle.seek(info.header_offset + 30 + int(name_length) + int(extra_length))
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
            read_header = read_header or np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            if dtype.hasobject:
                raise ValueError(f"{path}: array {key!r} holds Python objects; refusing to load it")
            if not np.prod(shape):
                arrays[key] = np.zeros(shape, dtype=dtype)
                continue
            arrays[key] = np.memmap(
                path, dtype=dtype, mode="r", offset=handle.tell(), shape=shape, order="F" if fortran else "C"
            )
    return arrays
