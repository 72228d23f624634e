import torch

from kiln.engine.kernels.registry import reference


@reference("conv")
def conv_reference(layer, inputs, run):
    x, w, b = inputs
    a = layer.attrs
    return torch.ops.aten.convolution(x, w, b, a["stride"], a["padding"], a["dilation"], a["transposed"], a["output_padding"], a["groups"])
