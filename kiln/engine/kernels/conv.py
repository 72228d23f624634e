import torch

from kiln.engine.kernels.registry import reference


def scale_input(layer, inputs: list) -> list:
    """Inputs with a fused input scale applied (optimize/fuse_input_scale.py): x * scale, the scale dropped."""
    if not layer.attrs.get("scaled_input"):
        return list(inputs)
    *inputs, scale = inputs
    inputs[0] = inputs[0] * scale
    return inputs


@reference("conv", takes=("scaled_input",))
def conv_reference(layer, inputs, run):
    x, w, b = scale_input(layer, inputs)
    a = layer.attrs
    return torch.ops.aten.convolution(x, w, b, a["stride"], a["padding"], a["dilation"], a["transposed"], a["output_padding"], a["groups"])
