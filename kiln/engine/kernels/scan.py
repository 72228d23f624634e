"""Layers that look along one dim: cumsum, sort, topk."""

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.registry import reference


@reference("cumsum")
def cumsum_reference(layer, inputs, run):
    dtype = layer.attrs["dtype"]
    return torch.cumsum(inputs[0], layer.attrs["dim"], dtype=None if dtype is None else dtype_from_name(dtype))


@reference("sort")
def sort_reference(layer, inputs, run):
    a = layer.attrs
    values, indices = torch.sort(inputs[0], dim=a["dim"], descending=a["descending"], stable=a["stable"])
    return values, indices


@reference("topk")
def topk_reference(layer, inputs, run):
    a = layer.attrs
    values, indices = torch.topk(inputs[0], a["k"], a["dim"], a["largest"], a["sorted"])
    return values, indices
