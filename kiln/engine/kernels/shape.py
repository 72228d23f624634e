"""Data-movement layers: reshape, permute, expand, flip, repeat, concat, split.

Every reference returns a dense contiguous tensor, never a view: the IR promises each layer
output a buffer of its own (TensorDesc.layout), and fast tactics read their inputs as dense.
"""

import torch

from kiln.engine.kernels.registry import reference


@reference("reshape")
def reshape_reference(layer, inputs, run):
    return inputs[0].reshape(run.shape(layer.attrs["shape"])).contiguous()


@reference("permute")
def permute_reference(layer, inputs, run):
    return inputs[0].permute(layer.attrs["dims"]).contiguous()


@reference("expand")
def expand_reference(layer, inputs, run):
    return inputs[0].expand(run.shape(layer.attrs["shape"])).contiguous()


@reference("flip")
def flip_reference(layer, inputs, run):
    return torch.flip(inputs[0], layer.attrs["dims"])


@reference("repeat")
def repeat_reference(layer, inputs, run):
    return inputs[0].repeat(run.shape(layer.attrs["repeats"]))


@reference("concat")
def concat_reference(layer, inputs, run):
    return torch.cat(inputs, layer.attrs["dim"])


@reference("split")
def split_reference(layer, inputs, run):
    parts = torch.split(inputs[0], run.shape(layer.attrs["sizes"]), layer.attrs["dim"])
    # Each part keeps its input's memory format: a channel split of an NHWC tensor copied to NCHW cost the H100
    # 0.8 ms per split in cspresnet50 at batch 128 (a transposing copy, and another back in the next conv).
    return tuple(p.clone(memory_format=torch.preserve_format) for p in parts)
