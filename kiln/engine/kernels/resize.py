"""The `resize` layer: F.interpolate with either an output size or scale factors."""

import torch.nn.functional as F

from kiln.engine.kernels.registry import reference


@reference("resize")
def resize_reference(layer, inputs, run):
    a = layer.attrs
    size = None if a["size"] is None else run.shape(a["size"])
    # recompute_scale_factor=False hands the scales to the kernel, which is what the captured op did.
    return F.interpolate(
        inputs[0], size=size, scale_factor=a["scales"], mode=a["mode"], align_corners=a["align_corners"], recompute_scale_factor=False
    )
