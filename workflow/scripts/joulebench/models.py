"""Model architectures by name, and model artifacts that load without pickle.

A name is small_cnn (ours) or any torchvision classification model, built in torchvision's layout,
optionally loaded with pretrained weights, then adapted to the dataset (head, channels, stem).

An artifact is two files, named by the rule that writes them: the weights (`model.pt`), a plain
state dict loaded with `weights_only=True`, and the recipe (`model.json`) to rebuild the module
(architecture, width, quantization). Structured pruning changes layer shapes, so loading first
resizes each layer to the saved tensors. We do that by hand because Torch-Pruning's own serializer
pickles module dicts, which weights_only loading refuses.
"""

import copy
import difflib

import torch
from torch import nn

from joulebench import store


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


class ModelError(ValueError):
    """A model or its weights cannot be used as configured; the message names the model or file."""


# Our own architecture; every other name is a torchvision classification model.
SMALL_CNN = "small_cnn"
# Narrower students (distillation): `width` is the first conv's width for small_cnn, the stem
# width (16 = full) of mobilenet_v3_small, which scales every layer through width_mult.
WIDTH_ARGUMENTS = {"mobilenet_v3_small": lambda width: {"width_mult": width / 16}}
# Images below this many pixels a side get a small-input stem (digits 8x8, MNIST 28, CIFAR 32).
SMALL_INPUT_MAX_SIDE = 64


def torchvision_classifiers() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def check_model_name(name: str) -> None:
    """Fail with the closest names where `name` is neither small_cnn nor a torchvision classifier."""
    choices = [SMALL_CNN, *torchvision_classifiers()]
    if name not in choices:
        close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
        hint = f"closest names: {', '.join(close)}" if close else f"choose one of {', '.join(choices)}"
        raise ModelError(f"unknown model {name!r}: not small_cnn nor a torchvision classifier; {hint}")


def source_architecture(recipe: dict) -> nn.Module:
    """The model as its pretrained weights are shaped: torchvision's ImageNet layout (3 channels,
    1000 classes, full-size stem), or small_cnn at the dataset's shape."""
    name, width = recipe["arch"], recipe.get("width")
    if name == SMALL_CNN:
        kwargs = {"width": width} if width is not None else {}
        return SmallCNN(recipe["in_channels"], recipe["num_classes"], **kwargs)
    check_model_name(name)
    from torchvision.models import get_model

    if width is None:
        return get_model(name)
    if name not in WIDTH_ARGUMENTS:
        raise ModelError(
            f"{name} has a fixed width (got width {width}); for a narrower student set "
            f"student_arch to {' or '.join([SMALL_CNN, *WIDTH_ARGUMENTS])}"
        )
    return get_model(name, **WIDTH_ARGUMENTS[name](width))


def build_model(recipe: dict, pretrained: dict | None = None) -> nn.Module:
    """A float model from a recipe {arch, in_channels, num_classes, width?, image_size?}.

    `pretrained` (a state dict of the source architecture, see `source_architecture`) is loaded
    before the model is adapted to the dataset: the head is replaced for num_classes, the first
    convolution takes in_channels, and small images get a stride-1 stem. Adapted layers are new
    parameters; every parameter still in the model afterwards came from `pretrained`.
    """
    model = source_architecture(recipe)
    if pretrained is not None:
        load_matching(model, pretrained, recipe["arch"], recipe.get("pretrained", {}).get("path", "weights"))
    if recipe["arch"] == SMALL_CNN and pretrained is None:
        return model  # built at the dataset's shape
    _replace_head(model, recipe["num_classes"], recipe["arch"])
    if recipe["arch"] != SMALL_CNN:
        _adapt_first_conv(model, recipe["in_channels"], _is_small(recipe.get("image_size")))
    return model


def _is_small(image_size) -> bool:
    # Recipes without an image size come from the small datasets this project started with.
    return image_size is None or min(image_size) < SMALL_INPUT_MAX_SIDE


def _last_linear(model: nn.Module, name: str) -> str:
    linears = [key for key, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ModelError(f"{name} has no linear classification head (nn.Linear) to replace; choose another")
    return linears[-1]


def _replace_head(model: nn.Module, num_classes: int, name: str) -> None:
    head_name = _last_linear(model, name)
    head = model.get_submodule(head_name)
    model.set_submodule(head_name, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))


def _adapt_first_conv(model: nn.Module, in_channels: int, small_input: bool) -> None:
    """The first convolution takes `in_channels` (pretrained filters summed over their RGB channels
    and shared out, so a grey image replicated to RGB gives the same response); on small images
    it and a stem max-pool (resnet's `maxpool`) stop downsampling."""
    name, conv = next((k, m) for k, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels != in_channels:
        adapted = nn.Conv2d(
            in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            adapted.weight.copy_(conv.weight.sum(1, keepdim=True).expand_as(adapted.weight) / in_channels)
            if conv.bias is not None:
                adapted.bias.copy_(conv.bias)
        model.set_submodule(name, adapted)
        conv = adapted
    if small_input:
        conv.stride = (1, 1)
        if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
            model.maxpool = nn.Identity()


def load_matching(model: nn.Module, state_dict: dict, name: str, source: str) -> None:
    """Load pretrained weights; the classification head may have any number of classes."""
    head = _last_linear(model, name)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape and not k.startswith(f"{head}.")
    ]
    found = {"missing": missing, "unexpected": unexpected, "wrong shape": wrong_shape}
    if any(found.values()):
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in found.items()
            if keys
        ]
        raise ModelError(f"{source} does not match model {name}: {'; '.join(problems)}")
    head_keys = {k for k in expected if k.startswith(f"{head}.")}
    body = {k: v for k, v in state_dict.items() if k not in head_keys}
    model.load_state_dict({**body, **{k: expected[k] for k in head_keys}})


def freeze_pretrained(model: nn.Module, state_dict: dict) -> list[str]:
    """Stop gradients of every parameter still equal to its pretrained tensor (the backbone); the
    new head and adapted stem layers train. Returns the names of the parameters that train.

    Batch-norm running statistics are buffers, not parameters: they still follow the new data.
    """
    trainable = []
    for name, param in model.named_parameters():
        loaded = state_dict.get(name)
        if loaded is not None and loaded.shape == param.shape and torch.equal(loaded, param.detach()):
            param.requires_grad_(False)
        else:
            trainable.append(name)
    return trainable


def check_input(model: nn.Module, name: str, shape: tuple[int, int, int], num_classes: int) -> None:
    """One forward pass of two dummy images in training and in eval mode (on a copy, random state
    kept), or a message naming the model and the input size it cannot take."""
    size = "x".join(str(s) for s in shape)
    model = copy.deepcopy(model)
    try:
        for training in (True, False):
            model.train(training)
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                output = model(torch.zeros(2, *shape))
            if not isinstance(output, torch.Tensor) or output.shape != (2, num_classes):
                raise ModelError(
                    f"model {name} does not return one logit per class on {size} input "
                    f"(got {type(output).__name__}); choose another model"
                )
    except (RuntimeError, ValueError, AssertionError) as error:
        if isinstance(error, ModelError):
            raise
        raise ModelError(
            f"model {name} cannot take {size} input ({str(error).splitlines()[0]}); choose a model that "
            "takes this size (a CNN with adaptive pooling), or resize the dataset to the size the model needs"
        ) from None


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


def resize_to_saved(model: nn.Module, state_dict: dict) -> None:
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


def model_recipe(arch: str, channels: int, num_classes: int, image_size, precision="fp32", **extra) -> dict:
    """What build_model needs to rebuild a model: architecture, input shape, classes, precision;
    `extra` adds a technique's own entries (a student's width, the precision asked for)."""
    recipe = {"arch": arch, "in_channels": channels, "num_classes": num_classes, "image_size": image_size}
    return {**recipe, "precision": precision, **extra}


def save_model(model: nn.Module, recipe: dict, model_path, recipe_path) -> None:
    """The weights (`model_path`, a state dict) and the recipe to rebuild the module (`recipe_path`)."""
    store.save_tensors(model_path, model.state_dict())
    store.write_json(recipe_path, recipe)
