"""Pretrained weights for a fine-tune: a torchvision weights enum read from the local TORCH_HOME
cache (downloaded only where `download: true`), or a local state-dict file.

A fine-tuned model's recipe records where its weights came from, but loading it again needs only
its own model.pt: the architecture is rebuilt from the recipe, then the saved state dict is loaded.
"""

import logging
from pathlib import Path
from urllib.parse import urlparse

import torch

from joulebench.models import SMALL_CNN, ModelError
from joulebench.train.checkpoint import file_digest

log = logging.getLogger(__name__)


def weights_enum(name: str):
    """torchvision's weights enum of model `name`, or None (small_cnn, models without weights)."""
    if name == SMALL_CNN:
        return None
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name)
    except (KeyError, ValueError):
        return None


def torchvision_weights(name: str, spec: str):
    """The enum member `spec` names ('DEFAULT', 'IMAGENET1K_V1' or 'ResNet18_Weights.IMAGENET1K_V1')
    for model `name`; None where `spec` names no weights enum (then it is a file)."""
    enum = weights_enum(name)
    prefix, _, member = spec.rpartition(".")
    if prefix.endswith("_Weights") and (enum is None or prefix != enum.__name__):
        raise ModelError(
            f"weights {spec!r} are not weights of model {name}; "
            f"{_choices(enum) if enum else f'{name} has no torchvision weights: give a local file'}"
        )
    if enum is None or member not in enum.__members__:
        return None
    return enum[member]


def _choices(enum) -> str:
    # __members__ lists DEFAULT, an alias of one of the weights, among them: name it once, first.
    names = dict.fromkeys(["DEFAULT", *enum.__members__])
    return f"{enum.__name__} has {', '.join(names)}"


def cache_path(weights) -> Path:
    """Where torch.hub keeps these weights: <TORCH_HOME>/hub/checkpoints/<file name of the URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def locate_weights(name: str, spec: str, download: bool = False):
    """Check that the weights can be had without running anything: ('torchvision', enum member) with
    its file in the cache (or download allowed), or ('file', path) of an existing file."""
    weights = torchvision_weights(name, spec)
    if weights is not None:
        path = cache_path(weights)
        if not path.is_file() and not download:
            raise ModelError(
                f"weights {spec} of model {name} are not in the local cache: put {weights.url} at "
                f"{path} (TORCH_HOME={Path(torch.hub.get_dir()).parent}), or set download: true"
            )
        return "torchvision", weights
    path = Path(spec)
    if not path.is_file():
        enum = weights_enum(name)
        names = f" nor a weights name of {name} ({_choices(enum)})" if enum else ""
        raise ModelError(f"weights {spec!r} of model {name}: no such file{names}")
    return "file", path


def load_weights(name: str, spec: str, download: bool = False) -> tuple[dict, dict]:
    """(state dict, provenance) of the weights `spec` of model `name`; provenance goes into the
    recipe and training.json: the weights named, the file read and its SHA-256."""
    kind, found = locate_weights(name, spec, download)
    if kind == "torchvision":
        state_dict = found.get_state_dict(progress=False, check_hash=True)
        path = cache_path(found)
        provenance = {"weights": f"{type(found).__name__}.{found.name}", "source": "torchvision"}
    else:
        path = found
        state_dict = read_state_dict(path)
        provenance = {"weights": spec, "source": "file"}
    log.info("pretrained weights of %s: %s (%s)", name, provenance["weights"], path)
    return state_dict, {**provenance, "path": str(path), "sha256": file_digest(path)}


def read_state_dict(path: Path) -> dict:
    """A state dict (name -> tensor) saved with torch.save, loaded without unpickling code."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise ModelError(
            f"cannot read weights file {path}: {str(error).splitlines()[0]}; save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelError(
            f"weights file {path} holds no state dict (name -> tensor); save it with "
            "torch.save(model.state_dict(), path)"
        )
    return state_dict
