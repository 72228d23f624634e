"""Two-input pointwise ops (arithmetic and comparisons), tensor-tensor or tensor-scalar → `binary`."""

import torch

from kiln.engine.convert.registry import converter

aten = torch.ops.aten

_BINARY = {
    aten.add.Tensor: "add",
    aten.add.Scalar: "add",
    aten.sub.Tensor: "sub",
    aten.sub.Scalar: "sub",
    aten.mul.Tensor: "mul",
    aten.mul.Scalar: "mul",
    aten.div.Tensor: "div",
    aten.div.Scalar: "div",
    aten.pow.Tensor_Tensor: "pow",
    aten.pow.Tensor_Scalar: "pow",
    aten.maximum.default: "maximum",
    aten.minimum.default: "minimum",
    aten.eq.Tensor: "eq",
    aten.eq.Scalar: "eq",
    aten.ne.Tensor: "ne",
    aten.ne.Scalar: "ne",
    aten.lt.Tensor: "lt",
    aten.lt.Scalar: "lt",
    aten.le.Tensor: "le",
    aten.le.Scalar: "le",
    aten.gt.Tensor: "gt",
    aten.gt.Scalar: "gt",
    aten.ge.Tensor: "ge",
    aten.ge.Scalar: "ge",
    aten.logical_and.default: "logical_and",
    aten.logical_or.default: "logical_or",
    aten.bitwise_and.Tensor: "logical_and",
    aten.bitwise_or.Tensor: "logical_or",
}


def _binary_check(node):
    if node.target in (aten.bitwise_and.Tensor, aten.bitwise_or.Tensor) and node.meta["val"].dtype != torch.bool:
        return "bitwise op on integers"
    if node.target is aten.div.Tensor and node.kwargs.get("rounding_mode") is not None:
        return "div with rounding_mode"
    return None


@converter(*_BINARY, supports=_binary_check)
def convert_binary(ctx, node):
    a, b = node.args[:2]
    alpha = node.kwargs.get("alpha", 1)
    attrs = {"op": _BINARY[node.target]}
    if isinstance(b, torch.fx.Node):
        if alpha != 1:
            b = ctx.add_like("binary", [ctx.tensor(b), None], b.meta["val"].shape, ctx.tensor(b).dtype, {"op": "mul", "scalar": alpha})
        rhs = ctx.tensor(b)
    else:
        rhs = None
        attrs["scalar"] = b * alpha if isinstance(b, (int, float)) else b
    # A scalar on the left (scalar - x) becomes a 0-d constant: 0-d tensors promote like scalars.
    return ctx.add("binary", [ctx.tensor(a), rhs], attrs)
