"""Pruning, each step a function model -> model: unstructured (masks) and structured (channels removed)."""

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Conv2d, nn.Linear)


# What each method's work imports, for prune_model to import before its energy window opens.
WORK_MODULES = {"magnitude": (), "channel": ("torch_pruning",)}


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(module, "weight") for module in model.modules() if isinstance(module, PRUNABLE)]


def step_amounts(sparsity: float, steps: int) -> list[float]:
    """Per-step fractions of the *remaining* weights that reach `sparsity` after `steps` steps.

    Geometric schedule (Zhu & Gupta style, without the cubic ramp): each step removes the same
    share of what is left, so step k ends at 1 - (1 - sparsity)^(k / steps).
    """
    keep_per_step = (1 - sparsity) ** (1 / steps)
    return [1 - keep_per_step] * steps


def global_magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` fraction of the still-unpruned conv/linear weights, ranked globally by |w|.

    Masks stay attached (fine-tuning keeps pruned weights at zero) and compose across calls
    (iterative pruning), until `make_pruning_permanent` folds them into the weights.
    """
    refresh_pruned_weights(model)
    prune.global_unstructured(prunable_weights(model), pruning_method=prune.L1Unstructured, amount=amount)
    return model


def refresh_pruned_weights(model: nn.Module) -> nn.Module:
    """Recompute each pruned `weight` (weight_orig x weight_mask) where those two now live.

    A pruned module's `weight` is a plain attribute that torch's pruning hook sets at each forward
    pass; `model.to()` moves weight_orig and weight_mask but not it. After a fine-tune on a GPU and
    a move back, it still lies on the GPU (and holds the values of the last forward pass), and the
    next pruning step would rank those stale weights against masks on the CPU.
    """
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                hook(module, ())  # what a forward pass does first
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


def output_layer(model: nn.Module) -> nn.Module:
    """The last conv/linear layer: its outputs are the classes, so it must keep every channel."""
    return [module for module in model.modules() if isinstance(module, PRUNABLE)][-1]


def channel_prune(model: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """Physically remove `ratio` of the channels of every prunable layer (L1 magnitude, per layer).

    Torch-Pruning's dependency graph keeps coupled layers consistent (batch norm, residual adds,
    depthwise groups, squeeze-excitation), so parameters, MACs and latency really drop.
    """
    import torch_pruning as tp

    model.eval()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[output_layer(model)],
    )
    pruner.step()
    return model


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels (conv) or features (linear) of every prunable layer, by module name."""
    counts = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            counts[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            counts[name] = module.out_features
    return counts
