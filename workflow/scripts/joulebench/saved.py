"""A saved model rebuilt: float weights, dynamic int8 weights, or an exported int8 program."""

from torch import nn

from joulebench import store
from joulebench.models import build_model, resize_to_saved


def load_model(model_path, recipe_path) -> tuple[nn.Module, dict]:
    """Rebuild a saved model: architecture, then shapes, then quantization, then weights."""
    recipe = store.read_json(recipe_path)
    model = build_model(recipe)
    quantization = recipe.get("quantization")
    if quantization in ("int8_static", "int8_qat"):
        from joulebench.compress.quantize import load_exported

        # A torch.export archive (see joulebench.compress.quantize); run through oneDNN int8 kernels.
        return load_exported(model_path)[0], recipe
    if quantization:
        from joulebench.compress.quantize import dynamic_int8, quantized_tensor_types

        state_dict = store.load_tensors(model_path, allow=quantized_tensor_types())
    else:
        state_dict = store.load_tensors(model_path)
    resize_to_saved(model, state_dict)
    if quantization:
        model = dynamic_int8(model)
    model.load_state_dict(state_dict, assign=True)
    return model.eval(), recipe
