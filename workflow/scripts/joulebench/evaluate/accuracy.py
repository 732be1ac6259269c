"""Top-1 accuracy of a model over one split, in batches on the model's device."""

import torch
from torch import nn

from joulebench.data.loader import loader


@torch.no_grad()
def accuracy(
    model: nn.Module, arrays: dict, split: str, batch_size: int = 512, memory_format=torch.contiguous_format
) -> float:
    device = next(model.parameters()).device
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    for images, labels in loader(arrays, split, batch_size, device=device):
        logits = model(images.to(device, memory_format=memory_format))
        correct += (logits.argmax(1) == labels.to(device)).sum()
        total += len(labels)
    return correct.item() / total
