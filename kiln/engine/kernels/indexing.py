"""Indexing and scattering layers: index (several index tensors), index_put, scatter, slice_scatter,
diagonal and as_strided. Each reference returns a new dense tensor; none writes into its input.
"""

import torch

from kiln.engine.ir.symbolic import evaluate
from kiln.engine.kernels.registry import reference


def _index_tuple(rank: int, dims: list[int], indices) -> tuple:
    # Advanced indexing with the index tensors at their dims and full slices elsewhere is
    # exactly aten.index: they broadcast together, and adjacent ones keep their place.
    key = [slice(None)] * rank
    for d, index in zip(dims, indices):
        key[d] = index
    return tuple(key)


@reference("index")
def index_reference(layer, inputs, run):
    x, *indices = inputs
    return x[_index_tuple(x.dim(), layer.attrs["dims"], indices)].contiguous()


@reference("index_put")
def index_put_reference(layer, inputs, run):
    x, values, *indices = inputs
    key = [None] * x.dim()
    for d, index in zip(layer.attrs["dims"], indices):
        key[d] = index
    return torch.ops.aten.index_put(x, key, values.to(x.dtype), layer.attrs["accumulate"])


@reference("scatter")
def scatter_reference(layer, inputs, run):
    x, index, src = inputs
    a = layer.attrs
    if src is None:
        return torch.scatter(x, a["dim"], index, a["value"])
    if a["reduce"] is None:
        return torch.scatter(x, a["dim"], index, src)
    return torch.scatter_reduce(x, a["dim"], index, src, a["reduce"], include_self=a["include_self"])


def _bound(value, run):
    return None if value is None else evaluate(value, run.symbols)


@reference("slice_scatter")
def slice_scatter_reference(layer, inputs, run):
    x, src = inputs
    a = layer.attrs
    return torch.slice_scatter(x, src.to(x.dtype), a["dim"], _bound(a["start"], run), _bound(a["end"], run), a["step"])


@reference("diagonal")
def diagonal_reference(layer, inputs, run):
    a = layer.attrs
    return torch.diagonal(inputs[0], a["offset"], a["dim1"], a["dim2"]).contiguous()


@reference("as_strided")
def as_strided_reference(layer, inputs, run):
    # Strides count elements of the dense input, as the captured op saw it.
    a = layer.attrs
    return torch.as_strided(inputs[0].contiguous(), a["size"], a["stride"], a["offset"]).contiguous()
