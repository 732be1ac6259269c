"""Compression techniques, each a function model -> model."""

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(module, "weight") for module in model.modules() if isinstance(module, PRUNABLE)]


def global_magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the `sparsity` fraction of smallest-magnitude conv/linear weights, ranked globally.

    The masks stay attached (so fine-tuning keeps pruned weights at zero) until
    `make_pruning_permanent` folds them into the weights.
    """
    prune.global_unstructured(prunable_weights(model), pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    for module, name in prunable_weights(model):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros among all conv/linear weights."""
    weights = [getattr(module, name).detach() for module, name in prunable_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def apply_quantization(model: nn.Module, method: str) -> nn.Module:
    """Post-training quantization of a float model in eval mode, through torchao.

    int8_dynamic: linear weights stored as int8, activations quantized per token at run time.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    if method != "int8_dynamic":
        raise ValueError(f"unknown quantization method {method!r}; choose int8_dynamic")
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def quantized_tensor_types() -> tuple:
    """Tensor classes a quantized artifact holds; allowed explicitly for weights_only loading."""
    from torchao.quantization import Int8Tensor

    return (Int8Tensor,)


def int8_linear_count(model: nn.Module) -> int:
    """Linear layers whose weight is stored as an int8 tensor (a torchao quantized tensor)."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            weight = module.weight
            stored = getattr(weight, "qdata", None)
            if stored is not None and stored.dtype is torch.int8:
                count += 1
    return count
