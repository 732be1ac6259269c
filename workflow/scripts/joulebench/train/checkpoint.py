"""Per-epoch checkpoints that let a killed training job resume to the same result.

A checkpoint holds everything the next epoch depends on: weights, optimizer and GradScaler state,
the global RNG state, the DataLoader generator's state (its position in the shuffle sequence), the
history rows and the energy windows of the epochs done so far. It is written atomically after each
epoch (temp file + rename), so a kill at any moment leaves the previous complete checkpoint, and it
loads with `weights_only=True`.

The checkpoint lives outside the rule's declared outputs (results/checkpoints/...): Snakemake
deletes the outputs of a failed job, which would throw the checkpoint away with them. A fingerprint
of everything that determines the run (recipe, settings, data, teacher, torch version) is stored in
it; a checkpoint with another fingerprint is refused rather than silently mixed in.
"""

import hashlib
import json
import logging
import signal
from contextlib import contextmanager
from pathlib import Path

import torch

from joulebench import store

log = logging.getLogger(__name__)

FORMAT = "joulebench.checkpoint/1"
# Exit status of a process ended by SIGTERM (128 + 15): SLURM and Snakemake see a failed job.
SIGTERM_EXIT_STATUS = 143


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(facts: dict) -> str:
    """A stable hash of the facts that determine a training run (JSON-serialisable values)."""
    facts = {**facts, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


class ForeignCheckpointError(RuntimeError):
    """A checkpoint exists at the path but was made by a different run."""


class Checkpointer:
    """Save and load the per-epoch state of one training run at one path."""

    def __init__(self, path, run_fingerprint: str):
        self.path = Path(path)
        self.fingerprint = run_fingerprint
        # Filled by load(): what earlier attempts of this run did.
        self.resumed_after_epoch = 0
        self.prior_windows: list[dict] = []

    def load(self) -> dict | None:
        """The last complete checkpoint of this run, or None if there is none."""
        if not self.path.exists():
            return None
        state = store.load_tensors(self.path)
        if state.get("format") != FORMAT or state.get("fingerprint") != self.fingerprint:
            raise ForeignCheckpointError(
                f"checkpoint {self.path} was made by a different run (another config, recipe, seed, "
                f"dataset or torch version), so resuming from it would mix two experiments. Delete it "
                f"to start this training from scratch: rm {self.path}"
            )
        log.info("resuming from %s after epoch %d", self.path, state["epoch"])
        self.resumed_after_epoch = state["epoch"]
        self.prior_windows = list(state["windows"])
        return state

    def save(self, state: dict) -> None:
        store.save_tensors(self.path, {**state, "format": FORMAT, "fingerprint": self.fingerprint})

    def remove(self) -> None:
        """Called once the rule's outputs are written: a later forced rerun starts from scratch."""
        self.path.unlink(missing_ok=True)
        # And the run's folders, where now empty, up to results/checkpoints/ itself.
        for folder in self.path.parents:
            if folder.name == "checkpoints" or any(folder.iterdir()):
                break
            folder.rmdir()


def rng_state(batches, device: torch.device) -> dict:
    """Every random state the next epoch draws from: global torch RNG, the DataLoader's shuffle
    generator, the CUDA generators where training computes on CUDA (`device`; a CPU run never
    touches CUDA) and, with online augmentation, the albumentations pipeline's numpy/python RNGs."""
    state = {"torch": torch.get_rng_state(), "loader": batches.generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    pipeline = getattr(batches.dataset, "pipeline", None)
    if pipeline is not None:
        # As JSON text: the generators' states hold integers wider than a tensor can.
        state["augment"] = json.dumps(
            [
                {"numpy": node.random_generator.bit_generator.state, "python": node.py_random.getstate()}
                for node in _augmentation_nodes(pipeline)
            ]
        )
    return state


def _augmentation_nodes(pipeline) -> list:
    """The albumentations Compose and every transform in it, in order: a seeded Compose gives each
    transform its own generators, so each one's state must be saved."""
    nodes = [pipeline]
    for transform in getattr(pipeline, "transforms", []):
        nodes.extend(_augmentation_nodes(transform))
    return nodes


def restore_rng_state(state: dict, batches, device: torch.device) -> None:
    """Put back what rng_state saved; CUDA's generators only where this run computes on CUDA."""
    torch.set_rng_state(state["torch"])
    batches.generator.set_state(state["loader"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda"])
    if "augment" in state:
        nodes = _augmentation_nodes(batches.dataset.pipeline)
        for node, saved in zip(nodes, json.loads(state["augment"]), strict=True):
            node.random_generator.bit_generator.state = saved["numpy"]
            version, internal, gauss = saved["python"]
            node.py_random.setstate((version, tuple(internal), gauss))


class Preempted(SystemExit):
    """Raised in the main thread on SIGTERM; exits with 143 after `finally`/cleanup blocks ran."""


@contextmanager
def exit_on_sigterm():
    """Turn SIGTERM (SLURM preemption, `scancel`) into an exception, then a non-zero exit.

    The exception unwinds through store.write_atomic, which deletes its temp file, so nothing
    half-written is left; the last complete checkpoint stays for the requeued job to resume from.
    """

    def preempt(signum, frame):
        log.warning("SIGTERM received: stopping; a rerun resumes from the last epoch checkpoint")
        raise Preempted(SIGTERM_EXIT_STATUS)

    previous = signal.signal(signal.SIGTERM, preempt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def merge_prior_energy(record: dict, prior_windows: list[dict], resumed_after_epoch: int) -> dict:
    """This attempt's energy record plus the epoch windows of earlier attempts (from the checkpoint).

    Each epoch is counted once: epochs up to the checkpoint from their original windows, later ones
    from this attempt. The work an interrupted attempt did after its last checkpoint (a partial
    epoch) and its start-up were not checkpointed and are not in the sum; the record says so.
    """
    if not prior_windows:
        return record
    merged = json.loads(json.dumps(record))
    devices = merged["devices"]
    for window in prior_windows:
        for key, device in window["devices"].items():
            same = devices.get(key, {}).get("device_id") == device["device_id"]
            target = key if same else f"{key}@{device['device_id']}"
            devices.setdefault(target, {**device, "joules": 0.0})["joules"] += device["joules"]
        for key in ("joules", "cpu_joules", "memory_joules", "gpu_joules", "cpu_seconds"):
            if window["estimate"].get(key) is not None:
                merged["estimate"][key] = (merged["estimate"].get(key) or 0.0) + window["estimate"][key]
        for part in window["parts"]:
            same = [p for p in merged["parts"] if (p["part"], p["source"]) == (part["part"], part["source"])]
            if same:
                same[0]["joules"] += part["joules"]
            else:
                merged["parts"].append(dict(part))
    prior_joules = sum(w["joules"] for w in prior_windows)
    prior_seconds = sum(w["wall_time_s"] for w in prior_windows)
    merged["joules"] += prior_joules
    merged["measured_joules"] += sum(w["measured_joules"] for w in prior_windows)
    merged["estimated_joules"] += sum(w["estimated_joules"] for w in prior_windows)
    merged["wall_time_s"] += prior_seconds
    merged["measured"] = merged["measured"] and all(w["measured"] for w in prior_windows)
    sources = {merged["source"], *(w["source"] for w in prior_windows)}
    merged["source"] = "+".join(sorted(set("+".join(sources).split("+"))))
    merged["windows"] = [*prior_windows, *merged["windows"]]
    # Flags of the earlier attempts' epochs are kept with their windows.
    from joulebench.energy.meter import flagged_windows

    for list_key, names in flagged_windows(prior_windows).items():
        merged[list_key] = [*names, *merged.get(list_key, [])]
    merged["resumed"] = {
        "after_epoch": resumed_after_epoch,
        "prior_epochs_joules": prior_joules,
        "prior_epochs_wall_time_s": prior_seconds,
        "not_counted": "the interrupted attempts' start-up and any partial epoch after their last checkpoint",
    }
    return merged
