"""Linear algebra: linear / addmm / mm / bmm / matmul → `linear` and `matmul` layers."""

import torch

from kiln.engine.convert.registry import converter

aten = torch.ops.aten


@converter(aten.linear.default)
def convert_linear(ctx, node):
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    return ctx.add("linear", [ctx.tensor(x), ctx.tensor(w), ctx.maybe_tensor(b)])


def _addmm_check(node):
    beta = node.kwargs.get("beta", 1)
    alpha = node.kwargs.get("alpha", 1)
    return None if beta == 1 and alpha == 1 else "addmm with beta/alpha != 1"


@converter(aten.addmm.default, supports=_addmm_check)
def convert_addmm(ctx, node):
    bias, a, b = node.args[:3]
    return ctx.add("matmul", [ctx.tensor(a), ctx.tensor(b), ctx.tensor(bias)])


@converter(aten.mm.default, aten.bmm.default, aten.matmul.default)
def convert_matmul(ctx, node):
    a, b = node.args[:2]
    return ctx.add("matmul", [ctx.tensor(a), ctx.tensor(b), None])
