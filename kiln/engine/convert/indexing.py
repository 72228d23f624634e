"""Writes by index and strided reads → `index_put`, `scatter`, `slice_scatter`, `diagonal`, `as_strided`.

Every one makes a new tensor (the functional forms torch.export records); the engine never
writes into a layer's input.
"""

import torch
from torch.fx import Node

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten


def _is_mask(index) -> bool:
    return index is not None and index.meta["val"].dtype in (torch.bool, torch.uint8)


def _index_put_check(node):
    indices = node_arguments(node)["indices"]
    if any(_is_mask(i) for i in indices):
        # A mask selects a data-dependent number of places (docs/coverage.md).
        return "index_put with a boolean mask (data-dependent number of places)"
    return None


@converter(aten.index_put.default, supports=_index_put_check)
def convert_index_put(ctx, node):
    a = node_arguments(node)
    dims = [d for d, index in enumerate(a["indices"]) if index is not None]
    inputs = [ctx.tensor(a["input"]), ctx.tensor(a["values"]), *(ctx.tensor(a["indices"][d]) for d in dims)]
    return ctx.add("index_put", inputs, {"dims": dims, "accumulate": bool(a["accumulate"])})


def _dim(node, dim: int) -> int:
    return dim % max(node.args[0].meta["val"].dim(), 1)


def _scalar_value(node):
    value = node_arguments(node).get("value")
    return "scatter with a value computed at run time" if isinstance(value, Node) else None


@converter(aten.scatter.value, supports=_scalar_value)
def convert_scatter_value(ctx, node):
    a = node_arguments(node)
    attrs = {"dim": _dim(node, a["dim"]), "value": a["value"], "reduce": None, "include_self": True}
    return ctx.add("scatter", [ctx.tensor(a["input"]), ctx.tensor(a["index"]), None], attrs)


@converter(aten.scatter.src)
def convert_scatter_src(ctx, node):
    a = node_arguments(node)
    attrs = {"dim": _dim(node, a["dim"]), "value": None, "reduce": None, "include_self": True}
    return ctx.add("scatter", [ctx.tensor(a["input"]), ctx.tensor(a["index"]), ctx.tensor(a["src"])], attrs)


@converter(aten.scatter_reduce.two)
def convert_scatter_reduce(ctx, node):
    a = node_arguments(node)
    attrs = {"dim": _dim(node, a["dim"]), "value": None, "reduce": a["reduce"], "include_self": bool(a["include_self"])}
    return ctx.add("scatter", [ctx.tensor(a["input"]), ctx.tensor(a["index"]), ctx.tensor(a["src"])], attrs)


def _static_step(node):
    return "slice_scatter with a dynamic step" if isinstance(node_arguments(node)["step"], Node) else None


@converter(aten.slice_scatter.default, supports=_static_step)
def convert_slice_scatter(ctx, node):
    a = node_arguments(node)
    attrs = {"dim": _dim(node, a["dim"]), "start": ctx.value(a["start"]), "end": ctx.value(a["end"]), "step": int(a["step"])}
    return ctx.add("slice_scatter", [ctx.tensor(a["input"]), ctx.tensor(a["src"])], attrs)


@converter(aten.diagonal.default)
def convert_diagonal(ctx, node):
    a = node_arguments(node)
    attrs = {"offset": int(a["offset"]), "dim1": _dim(node, a["dim1"]), "dim2": _dim(node, a["dim2"])}
    return ctx.add("diagonal", [ctx.tensor(a["input"])], attrs)


def _as_strided_check(node):
    a = node_arguments(node)
    val = node.args[0].meta["val"]
    if any(isinstance(v, Node) for v in [*a["size"], *a["stride"], a["storage_offset"]]):
        return "as_strided with dynamic sizes or strides"
    if not val.is_contiguous() or val.storage_offset() != 0:
        # The engine's tensors are dense: strides into a view's storage would read other elements.
        return "as_strided of a non-contiguous view"
    return None


@converter(aten.as_strided.default, supports=_as_strided_check)
def convert_as_strided(ctx, node):
    a = node_arguments(node)
    attrs = {"size": [int(s) for s in a["size"]], "stride": [int(s) for s in a["stride"]], "offset": int(a["storage_offset"] or 0)}
    return ctx.add("as_strided", [ctx.tensor(a["input"])], attrs)
