"""Selection layers: slice, select, index_select (gather of whole slices) and gather (per element).

Slice bounds may be symbolic (an expression over the input's dynamic dims); they follow
Python slicing: negative counts from the end, out-of-range bounds clamp.
"""

import torch

from kiln.engine.ir.symbolic import evaluate
from kiln.engine.kernels.registry import reference


def _bound(value, run):
    return None if value is None else evaluate(value, run.symbols)


def _index_at(dim: int, index):
    return (slice(None),) * dim + (index,)


@reference("slice")
def slice_reference(layer, inputs, run):
    a = layer.attrs
    window = slice(_bound(a["start"], run), _bound(a["end"], run), a["step"])
    return inputs[0][_index_at(a["dim"], window)].contiguous()


@reference("select")
def select_reference(layer, inputs, run):
    return inputs[0].select(layer.attrs["dim"], evaluate(layer.attrs["index"], run.symbols)).contiguous()


@reference("index_select")
def index_select_reference(layer, inputs, run):
    # Advanced indexing takes an index of any rank and wraps negative indices, as aten.index does.
    x, index = inputs
    return x[_index_at(layer.attrs["dim"], index)].contiguous()


@reference("gather")
def gather_reference(layer, inputs, run):
    x, index = inputs
    return torch.gather(x, layer.attrs["dim"], index)
