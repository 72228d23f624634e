"""Random tensors → `random` layers: a fresh draw on every call, never the values eager draws.

The shape is read from the node's output, so a dynamic size stays symbolic; a 0-d constant
carries the dtype and device to the tactic (the layer has no other input).
"""

import torch
from torch.fx import Node

from kiln.engine.convert.registry import converter, node_arguments
from kiln.engine.convert.shape import out_shape

aten = torch.ops.aten

# op → (layer op, its (low, high) from the arguments, or None where the op has no range)
_RANDOM = {
    aten.rand.default: ("rand", None),
    aten.rand_like.default: ("rand", None),
    aten.randn.default: ("randn", None),
    aten.randn_like.default: ("randn", None),
    aten.randint.default: ("randint", lambda a: (0, a["high"])),
    aten.randint.low: ("randint", lambda a: (a["low"], a["high"])),
    aten.randint_like.default: ("randint", lambda a: (0, a["high"])),
    aten.randint_like.low_dtype: ("randint", lambda a: (a["low"], a["high"])),
    aten.randperm.default: ("randperm", None),
}


def _random_check(node):
    a = node_arguments(node)
    if a.get("generator") is not None:
        return "random op with an explicit generator"
    return None


@converter(*_RANDOM, supports=_random_check)
def convert_random(ctx, node):
    op, bounds = _RANDOM[node.target]
    a = node_arguments(node)
    ((_, dtype),) = ctx.output_specs()
    attrs = {"op": op, "shape": out_shape(node)}
    if bounds is not None:
        low, high = bounds(a)
        attrs["low"], attrs["high"] = (ctx.value(b) if isinstance(b, Node) else int(b) for b in (low, high))
    like = ctx.constant(torch.zeros((), dtype=dtype), "random_dtype")
    return ctx.add("random", [like], attrs)
