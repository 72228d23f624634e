"""Tensors made from nothing but sizes and a value: full / zeros / ones (and their _like forms),
scalar_tensor, arange.

A fill becomes an `expand` of a 0-d constant, so its shape may be dynamic and the plan does
not store a weight as large as the output. A static arange is a constant; a dynamic one an
`arange` layer.
"""

import torch

from kiln.engine.convert.registry import converter
from kiln.engine.convert.shape import out_shape
from kiln.engine.ir.symbolic import is_static

aten = torch.ops.aten


def _fill(ctx, node, value):
    ((_, dtype),) = ctx.output_specs()
    scalar = ctx.constant(torch.tensor(value, dtype=dtype), "fill_value")
    return ctx.add("expand", [scalar], {"shape": out_shape(node)})


# op → where its fill value is: an argument index, or the value itself for ops that have none.
_FILL_VALUE = {
    aten.full.default: lambda node: node.args[1],
    aten.full_like.default: lambda node: node.args[1],
    aten.zeros_like.default: lambda node: 0,
    aten.ones_like.default: lambda node: 1,
    aten.zeros.default: lambda node: 0,
    aten.ones.default: lambda node: 1,
    # Uninitialised memory: zeros are as good a content as any, and deterministic.
    aten.empty.memory_format: lambda node: 0,
    aten.empty_permuted.default: lambda node: 0,
    aten.empty_like.default: lambda node: 0,
}


def _static_value(node):
    if isinstance(_FILL_VALUE[node.target](node), torch.fx.Node):
        return "fill with a dynamic value"
    return None


@converter(*_FILL_VALUE, supports=_static_value)
def convert_fill(ctx, node):
    return _fill(ctx, node, _FILL_VALUE[node.target](node))


@converter(aten.scalar_tensor.default)
def convert_scalar_tensor(ctx, node):
    ((_, dtype),) = ctx.output_specs()
    return ctx.constant(torch.tensor(node.args[0], dtype=dtype), "scalar")


# (start, end, step) from the arguments of each arange overload.
_ARANGE_BOUNDS = {
    aten.arange.default: lambda args: (0, args[0], 1),
    aten.arange.start: lambda args: (args[0], args[1], 1),
    aten.arange.start_step: lambda args: (args[0], args[1], args[2] if len(args) > 2 else 1),
}


@converter(*_ARANGE_BOUNDS)
def convert_arange(ctx, node):
    start, end, step = (ctx.value(b) for b in _ARANGE_BOUNDS[node.target](node.args))
    ((shape, dtype),) = ctx.output_specs()
    if is_static(shape) and not any(isinstance(b, str) for b in (start, end, step)):
        return ctx.constant(torch.arange(start, end, step, dtype=dtype), "arange")
    like = ctx.constant(torch.zeros((), dtype=dtype), "arange_dtype")
    return ctx.add("arange", [like], {"start": start, "end": end, "step": step})
