"""cumsum → `cumsum`; sort and topk → `sort` / `topk` (two outputs: values and indices)."""

import torch
from torch.fx import Node

from kiln.engine.convert.registry import converter, node_arguments
from kiln.engine.ir.dtypes import dtype_name

aten = torch.ops.aten


def _dim(node, dim: int) -> int:
    return dim % max(node.args[0].meta["val"].dim(), 1)


@converter(aten.cumsum.default)
def convert_cumsum(ctx, node):
    a = node_arguments(node)
    # The dtype the node really makes (an int input sums in int64 when no dtype is given).
    out_dtype = ctx.output_specs()[0][1]
    cast = out_dtype != ctx.tensor(a["input"]).dtype
    return ctx.add("cumsum", [ctx.tensor(a["input"])], {"dim": _dim(node, a["dim"]), "dtype": dtype_name(out_dtype) if cast else None})


@converter(aten.sort.default, aten.sort.stable)
def convert_sort(ctx, node):
    a = node_arguments(node)
    attrs = {"dim": _dim(node, a["dim"]), "descending": bool(a["descending"]), "stable": bool(a.get("stable") or False)}
    return ctx.add("sort", [ctx.tensor(a["input"])], attrs)


def _static_k(node):
    return "topk with k computed at run time" if isinstance(node_arguments(node)["k"], Node) else None


@converter(aten.topk.default, supports=_static_k)
def convert_topk(ctx, node):
    a = node_arguments(node)
    attrs = {"k": int(a["k"]), "dim": _dim(node, a["dim"]), "largest": bool(a["largest"]), "sorted": bool(a["sorted"])}
    return ctx.add("topk", [ctx.tensor(a["input"])], attrs)
