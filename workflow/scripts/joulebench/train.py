"""One explicit training loop shared by every variant: baseline, precision, fine-tune, distillation."""

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from joulebench.data import loader

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    precision: str = "fp32"
    seed: int = 0


@dataclass(frozen=True)
class Distillation:
    """Hinton et al. (2015) knowledge distillation: soft targets at a temperature, mixed by alpha."""

    teacher: nn.Module
    temperature: float = 4.0
    alpha: float = 0.7


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


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
        except RuntimeError:
            continue
        if out.dtype is dtype:
            return name
    return "fp32"


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(labels)."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


@torch.no_grad()
def accuracy(model: nn.Module, arrays: dict, split: str, batch_size: int = 512) -> float:
    device = next(model.parameters()).device
    model.eval()
    correct = total = 0
    for images, labels in loader(arrays, split, batch_size):
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += len(labels)
    return correct / total


def train(
    model: nn.Module,
    arrays: dict,
    settings: TrainSettings,
    meter,
    distillation: Distillation | None = None,
) -> list[dict]:
    """Train in place; one energy window per epoch. Returns one history row per epoch."""
    device = pick_device()
    model.to(device)
    dtype = PRECISIONS[settings.precision]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    teacher = distillation.teacher.to(device).eval() if distillation else None
    batches = loader(arrays, "train", settings.batch_size, shuffle=True, seed=settings.seed)
    history, cumulative_joules = [], 0.0
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        with meter.window(f"epoch{epoch}") as window:
            model.train()
            loss_sum = correct = seen = 0
            for images, labels in batches:
                images, labels = images.to(device), labels.to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = model(images)
                    if teacher is None:
                        loss = F.cross_entropy(logits, labels)
                    else:
                        with torch.no_grad():
                            teacher_logits = teacher(images)
                        loss = distillation_loss(
                            logits, teacher_logits, labels, distillation.temperature, distillation.alpha
                        )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} in epoch {epoch}; lower the learning rate "
                        f"(now {settings.lr}) or use fp32 precision"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.item() * len(labels)
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
            val_accuracy = accuracy(model, arrays, "val")
        record = window.record
        cumulative_joules += record["joules"]
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_accuracy": val_accuracy,
            "seconds": time.perf_counter() - started,
            "joules": record["joules"],
            "cumulative_joules": cumulative_joules,
            "energy_source": record["source"],
        }
        history.append(row)
        log.info(
            "epoch %d/%d loss %.4f train_acc %.4f val_acc %.4f %.2fs %.2f J (%s)",
            epoch, settings.epochs, row["train_loss"], row["train_accuracy"], val_accuracy,
            row["seconds"], row["joules"], row["energy_source"],
        )  # fmt: skip
    return history
