"""Layers that move or compare whole positions: pixel_shuffle, grid_sample, cdist, pdist, and 3-D pooling."""

import torch
import torch.nn.functional as F

from kiln.engine.kernels.registry import reference


@reference("pixel_shuffle")
def pixel_shuffle_reference(layer, inputs, run):
    a = layer.attrs
    fn = F.pixel_shuffle if a["op"] == "shuffle" else F.pixel_unshuffle
    return fn(inputs[0], a["factor"]).contiguous()


@reference("grid_sample")
def grid_sample_reference(layer, inputs, run):
    # aten's integer codes: interpolation 0 bilinear, 1 nearest, 2 bicubic; padding 0 zeros, 1 border, 2 reflection.
    a = layer.attrs
    return torch.grid_sampler_2d(inputs[0], inputs[1], a["interpolation"], a["padding"], a["align_corners"])


@reference("cdist")
def cdist_reference(layer, inputs, run):
    a = layer.attrs
    return torch.ops.aten._cdist_forward(inputs[0], inputs[1], a["p"], a["compute_mode"])


@reference("pdist")
def pdist_reference(layer, inputs, run):
    return torch.ops.aten._pdist_forward(inputs[0], layer.attrs["p"])


POOLS_3D = {
    "max": lambda x, a, run: F.max_pool3d(x, a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]),
    "avg": lambda x, a, run: F.avg_pool3d(
        x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"], a["divisor_override"]
    ),
    "adaptive_avg": lambda x, a, run: F.adaptive_avg_pool3d(x, run.shape(a["output_size"])),
    "adaptive_max": lambda x, a, run: F.adaptive_max_pool3d(x, run.shape(a["output_size"])),
}


@reference("pool3d")
def pool3d_reference(layer, inputs, run):
    return POOLS_3D[layer.attrs["op"]](inputs[0], layer.attrs, run)
