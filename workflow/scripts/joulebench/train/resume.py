"""Training that survives a killed job: per-epoch checkpoints, the energy of earlier attempts
merged into the record, and the outputs written before the checkpoint is removed.

Used by the rules that train (train_model, distill_model, and the ranks of a data_parallel
train_model, joulebench.train.data_parallel); `outputs` are the rule's declared files (model, recipe,
history, energy, training).
"""

from contextlib import nullcontext
from dataclasses import asdict

import torch

from joulebench import store
from joulebench.energy.meter import rule_meter
from joulebench.models import save_model
from joulebench.precision import numeric_flags
from joulebench.run.lazy_import import pandas as pd
from joulebench.train.checkpoint import Checkpointer, exit_on_sigterm, fingerprint, merge_prior_energy
from joulebench.train.loop import train, training_summary


def write_trained(
    outputs: dict, model, recipe: dict, history: list[dict], record: dict, summary=None
) -> None:
    """A trained model's declared files: weights, recipe, per-epoch history, energy record and,
    where the rule declares one, the training summary."""
    save_model(model.cpu(), recipe, outputs["model"], outputs["recipe"])
    store.write_csv(outputs["history"], pd.DataFrame(history))
    store.write_json(outputs["energy"], record)
    if summary is not None:
        store.write_json(outputs["training"], summary)


def run_fingerprint(facts: dict, recipe: dict, settings) -> str:
    """The fingerprint a run's checkpoint carries: its data facts, recipe and settings."""
    return fingerprint({**facts, "recipe": recipe, "settings": asdict(settings)})


def with_prior_epochs(record: dict, checkpointer) -> dict:
    """The attempt's energy record plus the checkpointed epochs of the attempts before it."""
    if checkpointer is None:
        return record
    return merge_prior_energy(record, checkpointer.prior_windows, checkpointer.resumed_after_epoch)


def device_record(pinned: str | None, meter) -> dict:
    """What a training record says about its device: the pin (None: unpinned), the torch device
    it computed on and the counters metered in its windows (a CPU run: RAPL package and DRAM
    only, or nothing where only the estimate exists; no GPU is charged to it)."""
    return {
        "pinned": pinned,
        "computed_on": meter.placement.torch_device.type,
        "metered": sorted(f"{name}:{facts['source']}" for name, facts in meter.facts.items()),
        "gpu_charged": meter.placement.gpu is not None,
    }


def train_resumably(
    rule: str,
    model,
    recipe: dict,
    arrays: dict,
    settings,
    placement,
    estimate: dict,
    outputs: dict,
    checkpoint_path,
    facts: dict,
    distillation=None,
    conditions=None,
) -> None:
    """Train with per-epoch checkpoints under `rule`'s meter over `placement` (where it computes).

    `facts` (data and teacher digests) and the recipe and settings make the checkpoint's
    fingerprint. The energy record sums this attempt and the checkpointed epochs of earlier ones.
    `conditions`: a context manager holding a hardware setting for the whole run (a GPU power
    limit, joulebench.train.power_limit), entered inside the SIGTERM handler so it is undone on
    preemption too; the facts of what it held go into the energy record and the training summary,
    as do the CPU thread count, the devices metered (`device`, device_record) and the numeric
    flags the run computed under (`numerics`, train.numeric_flags).
    """
    checkpointer = (
        Checkpointer(checkpoint_path, run_fingerprint(facts, recipe, settings)) if checkpoint_path else None
    )
    with exit_on_sigterm():
        with conditions or nullcontext() as limit:
            with rule_meter(rule, estimate, placement) as meter:
                callback = limit.callback(meter) if limit else None
                history = train(model, arrays, settings, meter, distillation, checkpointer, callback)
            held = {
                **(limit.facts() if limit else {}),
                "cpu_threads": torch.get_num_threads(),
                "device": device_record(recipe.get("device"), meter),
                "numerics": numeric_flags(),
            }
        resumed_after = checkpointer.resumed_after_epoch if checkpointer else 0
        record = with_prior_epochs(meter.record(), checkpointer) | held
        summary = {
            **training_summary(history, settings),
            "precision_requested": recipe.get("precision_requested", settings.precision),
            "resumed_after_epoch": resumed_after or None,
            "pretrained": recipe.get("pretrained"),
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            **held,
        }
        write_trained(outputs, model, recipe, history, record, summary)
    if checkpointer:
        checkpointer.remove()
