"""Linear algebra: linear / addmm / mm / bmm / matmul → `linear` and `matmul` layers.

Batched and broadcasting `@` reaches the engine as expand/view + bmm (core-ATen decomposition);
the views are the shape converters' business, the bmm is ours.
"""

import torch

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten


@converter(aten.linear.default)
def convert_linear(ctx, node):
    a = node_arguments(node)
    return ctx.add("linear", [ctx.tensor(a["input"]), ctx.tensor(a["weight"]), ctx.maybe_tensor(a["bias"])])


def _scalar_coefficients(node):
    a = node_arguments(node)
    if any(isinstance(a[k], torch.fx.Node) for k in ("alpha", "beta")):
        return "addmm with tensor alpha/beta"
    return None


@converter(aten.addmm.default, supports=_scalar_coefficients)
def convert_addmm(ctx, node):
    a = node_arguments(node)
    attrs = {"alpha": a["alpha"], "beta": a["beta"]}
    return ctx.add("matmul", [ctx.tensor(a["mat1"]), ctx.tensor(a["mat2"]), ctx.tensor(a["input"])], attrs)


@converter(aten.mm.default, aten.bmm.default, aten.matmul.default)
def convert_matmul(ctx, node):
    a, b = node.args[:2]
    return ctx.add("matmul", [ctx.tensor(a), ctx.tensor(b), None])
