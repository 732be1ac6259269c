"""Model architectures by name, and model artifacts that load without pickle.

An artifact is two files: `model.pt`, a plain state dict loaded with `weights_only=True`, and
`model.json`, the recipe to rebuild the module (architecture, width, quantization). Structured
pruning changes layer shapes, so loading first resizes each layer to the saved tensors. We do
that by hand because Torch-Pruning's own serializer pickles module dicts, which weights_only
loading refuses.
"""

from pathlib import Path

import torch
from torch import nn

from joulebench import io


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: small, fast on CPU, linear-heavy enough for INT8 to matter."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def _small_input_resnet18(in_channels: int, num_classes: int, width: int = 64):
    from torchvision.models import resnet18

    if width != 64:
        raise ValueError(
            f"resnet18 has a fixed width of 64 (got width {width}); for a narrower student set "
            "student_arch to small_cnn or mobilenet_v3_small"
        )
    model = resnet18(num_classes=num_classes)
    # Small images: a 3x3 stem without the max-pool keeps spatial size for the residual stages.
    model.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _small_input_mobilenet_v3_small(in_channels: int, num_classes: int, width: int = 16):
    from torchvision.models import mobilenet_v3_small

    # `width` is the stem's channel count (16 at full width); it scales every layer via width_mult.
    model = mobilenet_v3_small(num_classes=num_classes, width_mult=width / 16)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model


ARCHITECTURES = {
    "small_cnn": SmallCNN,
    "resnet18": _small_input_resnet18,
    "mobilenet_v3_small": _small_input_mobilenet_v3_small,
}


def build_model(recipe: dict) -> nn.Module:
    """A fresh float model from a recipe {arch, in_channels, num_classes, width?}."""
    arch = recipe["arch"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    kwargs = {"width": recipe["width"]} if "width" in recipe else {}
    return ARCHITECTURES[arch](recipe["in_channels"], recipe["num_classes"], **kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters); quantized weights count by their logical shape."""
    total = nonzero = 0
    for param in model.parameters():
        # detach first: dequantize() of a float parameter would return a non-leaf view of it.
        dense = param.detach()
        dense = dense.dequantize() if dense.is_quantized or hasattr(param, "qdata") else dense
        total += dense.numel()
        nonzero += int(torch.count_nonzero(dense))
    return total, nonzero


def _resize_to(model: nn.Module, state_dict: dict) -> None:
    """Give every conv/linear/batch-norm layer the shapes found in state_dict (structured pruning)."""
    for name, module in model.named_modules():
        weight = state_dict.get(f"{name}.weight")
        if weight is None or weight.shape == module.weight.shape:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            module.out_channels, in_per_group = weight.shape[:2]
            # A pruned depthwise conv keeps one group per channel.
            module.groups = module.out_channels if depthwise else module.groups
            module.in_channels = in_per_group * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = weight.shape[0]
        for key, _ in list(module.named_parameters(recurse=False)):
            setattr(module, key, nn.Parameter(torch.empty_like(state_dict[f"{name}.{key}"])))
        for key, buffer in list(module.named_buffers(recurse=False)):
            if buffer.dim() > 0:
                module.register_buffer(key, torch.empty_like(state_dict[f"{name}.{key}"]))


def save_model(model: nn.Module, recipe: dict, directory) -> None:
    directory = Path(directory)
    io.save_tensors(directory / "model.pt", model.state_dict())
    io.write_json(directory / "model.json", recipe)


def load_model(directory) -> tuple[nn.Module, dict]:
    """Rebuild a saved model: architecture, then shapes, then quantization, then weights."""
    directory = Path(directory)
    recipe = io.read_json(directory / "model.json")
    model = build_model(recipe)
    quantization = recipe.get("quantization")
    if quantization in ("int8_static", "int8_qat"):
        from joulebench.quantize import load_exported

        # A torch.export archive (see joulebench.quantize); run through oneDNN int8 kernels.
        return load_exported(directory / "model.pt")[0], recipe
    if quantization:
        from joulebench.quantize import dynamic_int8, quantized_tensor_types

        state_dict = io.load_tensors(directory / "model.pt", allow=quantized_tensor_types())
    else:
        state_dict = io.load_tensors(directory / "model.pt")
    _resize_to(model, state_dict)
    if quantization:
        model = dynamic_int8(model)
    model.load_state_dict(state_dict, assign=True)
    return model.eval(), recipe
