"""One explicit training loop shared by every variant: baseline, precision, fine-tune, distillation."""

import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from joulebench.data.loader import check_batch_size, loader, workers_stopped
from joulebench.evaluate.accuracy import accuracy
from joulebench.precision import PRECISIONS, out_of_memory_hint
from joulebench.train.checkpoint import Checkpointer, restore_rng_state, rng_state

log = logging.getLogger(__name__)


# What a training run imports on first use, for the training stages to import before their energy
# window opens: torch.optim's Optimizer imports Dynamo (800 modules, 1-3 s) on its first parameter
# group (torch._disable_dynamo), even where nothing is compiled; torch.save (the per-epoch
# checkpoint) loads its serialization settings on first use.
WORK_MODULES = ("torch._dynamo", "torch.utils.serialization")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    precision: str = "fp32"
    seed: int = 0
    # Stop after the first epoch whose validation accuracy reaches this fraction (None: never).
    target_val_accuracy: float | None = None
    channels_last: bool = False
    compile: bool = False
    # Albumentations transforms ({name, params}) applied online to training batches (joulebench.data.augment).
    augmentation: tuple = ()
    # DataLoader worker processes (0: load in this process, inside the energy windows).
    loader_workers: int = 0


def training_settings(
    training: dict, seed: int, precision: str = "fp32", epochs: int | None = None
) -> TrainSettings:
    """The settings of config `training` for one run: `epochs` for a technique's own count (a
    fine-tune, a proxy run), else training.epochs."""
    return TrainSettings(
        epochs=epochs or training["epochs"],
        batch_size=training["batch_size"],
        lr=training["lr"],
        weight_decay=training["weight_decay"],
        precision=precision,
        seed=seed,
        channels_last=training["channels_last"],
        compile=training["compile"],
        loader_workers=training["loader_workers"],
    )


@dataclass(frozen=True)
class Distillation:
    """Hinton et al. (2015) knowledge distillation: soft targets at a temperature, mixed by alpha."""

    teacher: nn.Module
    temperature: float
    alpha: float


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(labels)."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def target_reached(history: list[dict], target: float | None) -> bool:
    return target is not None and bool(history) and history[-1]["val_accuracy"] >= target


def training_summary(history: list[dict], settings: TrainSettings) -> dict:
    """Time- and energy-to-accuracy (DAWNBench / Zeus style): cumulative seconds and joules of the
    epochs up to the first one whose validation accuracy reaches the target; None if none did."""
    target = settings.target_val_accuracy
    first = next((row for row in history if target is not None and row["val_accuracy"] >= target), None)
    return {
        "epochs_max": settings.epochs,
        "epochs_run": len(history),
        "target_val_accuracy": target,
        "stopped_early": target_reached(history, target) and len(history) < settings.epochs,
        "epoch_reaching_target": first["epoch"] if first else None,
        "time_to_accuracy_s": first["cumulative_seconds"] if first else None,
        "energy_to_accuracy_j": first["cumulative_joules"] if first else None,
        "energy_source": "+".join(sorted({row["energy_source"] for row in history})),
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "best_val_accuracy": max((row["val_accuracy"] for row in history), default=None),
        "total_seconds": history[-1]["cumulative_seconds"] if history else 0.0,
        "total_joules": history[-1]["cumulative_joules"] if history else 0.0,
        "precision": settings.precision,
        "channels_last": settings.channels_last,
        "compile": settings.compile,
    }


def _resume(checkpointer, model, optimizer, scaler, batches, device: torch.device) -> list[dict]:
    """Load the last checkpoint into the run's state; returns the history so far (empty if none)."""
    state = checkpointer.load() if checkpointer else None
    if state is None:
        return []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"], batches, device)
    return list(state["history"])


def without_graph_capture_check(optimizer: torch.optim.Optimizer) -> None:
    """Skip the CUDA-graph capture check of a CPU training's optimizer steps.

    Before every step torch's optimizers ask the accelerator's current stream whether it is
    capturing a CUDA graph (`Optimizer._accelerator_graph_capture_health_check`). On a GPU host
    that starts CUDA, and a CUDA context on the GPU, in a rule that trains on the CPU, inside its
    first epoch window. CPU parameters cannot be captured in a CUDA graph, so for them the check
    has nothing to find; no public switch turns it off.
    """
    optimizer._accelerator_graph_capture_health_check = lambda: None


def train(
    model: nn.Module,
    arrays: dict,
    settings: TrainSettings,
    meter,
    distillation: Distillation | None = None,
    checkpointer: Checkpointer | None = None,
    callback=None,
) -> list[dict]:
    """Train in place; one energy window per epoch. Returns one history row per epoch.

    `callback`: an object with Zeus's training hooks on_step_begin() and on_epoch_end()
    (zeus.optimizer.power_limit.GlobalPowerLimitOptimizer), called at each batch and epoch.

    With a checkpointer, the state after every epoch is saved and a rerun resumes from it (the
    history returned then includes the earlier attempts' epochs). Training stops early after the
    first epoch whose validation accuracy reaches `settings.target_val_accuracy`.
    """
    check_batch_size(len(arrays["train_y"]), settings.batch_size)
    # Training computes where its meter meters (joulebench.devices.Placement).
    device = meter.placement.torch_device
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    dtype = PRECISIONS[settings.precision]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if device.type == "cpu":
        without_graph_capture_check(optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    teacher = distillation.teacher.to(device, memory_format=memory_format).eval() if distillation else None
    forward = torch.compile(model) if settings.compile else model
    batches = loader(
        arrays,
        "train",
        settings.batch_size,
        shuffle=True,
        seed=settings.seed,
        augment=settings.augmentation,
        workers=settings.loader_workers,
        device=device,
    )
    # The loader's worker processes end with the training, also when an epoch fails.
    with workers_stopped(batches):
        history = _resume(checkpointer, model, optimizer, scaler, batches, device)
        epoch_windows = list(checkpointer.prior_windows) if checkpointer else []
        for epoch in range(len(history) + 1, settings.epochs + 1):
            if target_reached(history, settings.target_val_accuracy):
                break
            started = time.perf_counter()
            fits = out_of_memory_hint(
                device, f"training epoch {epoch}", settings.batch_size, "training.batch_size"
            )
            with fits, meter.window(f"epoch{epoch}") as window:
                forward.train()
                # Running sums stay on the device: no host sync per batch.
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), dtype=torch.int64, device=device)
                seen = 0
                for images, labels in batches:
                    if callback is not None:
                        callback.on_step_begin()
                    images = images.to(device, memory_format=memory_format, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        logits = forward(images)
                        if teacher is None:
                            loss = F.cross_entropy(logits, labels)
                        else:
                            with torch.no_grad():
                                teacher_logits = teacher(images)
                            loss = distillation_loss(
                                logits, teacher_logits, labels, distillation.temperature, distillation.alpha
                            )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    loss_sum += loss.detach().float() * len(labels)
                    correct += (logits.argmax(1) == labels).sum()
                    seen += len(labels)
                train_loss = loss_sum.item() / seen
                if not math.isfinite(train_loss):
                    raise FloatingPointError(
                        f"loss became {train_loss} in epoch {epoch}; lower the learning rate "
                        f"(now {settings.lr}) or use fp32 precision"
                    )
                val_accuracy = accuracy(forward, arrays, "val", memory_format=memory_format)
            if callback is not None:
                callback.on_epoch_end()
            record = window.record
            seconds = time.perf_counter() - started
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": correct.item() / seen,
                "val_accuracy": val_accuracy,
                "seconds": seconds,
                "cumulative_seconds": (history[-1]["cumulative_seconds"] if history else 0.0) + seconds,
                "joules": record["joules"],
                "cumulative_joules": (history[-1]["cumulative_joules"] if history else 0.0)
                + record["joules"],
                "energy_source": record["source"],
            }
            history.append(row)
            epoch_windows.append(record)
            log.info(
                "epoch %d/%d loss %.4f train_acc %.4f val_acc %.4f %.2fs %.2f J (%s)",
                epoch, settings.epochs, row["train_loss"], row["train_accuracy"], val_accuracy,
                row["seconds"], row["joules"], row["energy_source"],
            )  # fmt: skip
            if checkpointer:
                checkpointer.save(
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": rng_state(batches, device),
                        "history": history,
                        "windows": epoch_windows,
                    }
                )
    if target_reached(history, settings.target_val_accuracy) and len(history) < settings.epochs:
        log.info(
            "validation accuracy reached %s: stopped after epoch %d",
            settings.target_val_accuracy,
            len(history),
        )
    return history
