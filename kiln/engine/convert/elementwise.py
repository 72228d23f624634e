"""Two-input pointwise ops (arithmetic, comparisons, logic) → `binary`; where → `where`.

Either operand may be a Python scalar. A scalar on the right stays an attribute; one on the
left (1 - x, 2 ** x) becomes a 0-d constant, which type-promotes like a scalar would.
"""

import torch
from torch.fx import Node

from kiln.engine.convert.registry import converter

aten = torch.ops.aten

_BINARY = {
    aten.add.Tensor: "add",
    aten.add.Scalar: "add",
    aten.sub.Tensor: "sub",
    aten.sub.Scalar: "sub",
    aten.rsub.Tensor: "sub",
    aten.rsub.Scalar: "sub",
    aten.mul.Tensor: "mul",
    aten.mul.Scalar: "mul",
    aten.div.Tensor: "div",
    aten.div.Scalar: "div",
    aten.floor_divide.default: "div_floor",
    aten.fmod.Tensor: "fmod",
    aten.fmod.Scalar: "fmod",
    aten.remainder.Tensor: "remainder",
    aten.remainder.Scalar: "remainder",
    aten.pow.Tensor_Tensor: "pow",
    aten.pow.Tensor_Scalar: "pow",
    aten.pow.Scalar: "pow",
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
    aten.logical_xor.default: "logical_xor",
    aten.bitwise_and.Tensor: "bitwise_and",
    aten.bitwise_and.Scalar: "bitwise_and",
    aten.bitwise_or.Tensor: "bitwise_or",
    aten.bitwise_or.Scalar: "bitwise_or",
    aten.bitwise_xor.Tensor: "bitwise_xor",
    aten.bitwise_xor.Scalar: "bitwise_xor",
    # Scalar first (5 & x): the scalar becomes a 0-d constant, which promotes as the scalar would.
    aten.bitwise_and.Scalar_Tensor: "bitwise_and",
    aten.bitwise_or.Scalar_Tensor: "bitwise_or",
    aten.bitwise_xor.Scalar_Tensor: "bitwise_xor",
    aten.atan2.default: "atan2",
}

_DIV_MODES = {None: "div", "floor": "div_floor", "trunc": "div_trunc"}
_DIV_WITH_MODE = {aten.div.Tensor_mode, aten.div.Scalar_mode}
# rsub(x, y, alpha) is y - alpha * x: the operands swap places.
_REVERSED = {aten.rsub.Tensor, aten.rsub.Scalar}


def _is_size(arg) -> bool:
    return isinstance(arg, Node) and not isinstance(arg.meta.get("val"), torch.Tensor)


def _binary_check(node):
    lhs, rhs = (node.args[1], node.args[0]) if node.target in _REVERSED else node.args[:2]
    if _is_size(lhs):
        return "dynamic size as the left operand"
    if _is_size(rhs) and node.kwargs.get("alpha", 1) != 1:
        return "alpha with a dynamic size operand"
    return None


def _div_check(node):
    mode = node.kwargs.get("rounding_mode")
    if mode not in _DIV_MODES:
        return f"div with rounding_mode={mode!r}"
    return _binary_check(node)


def _binary(ctx, node, op: str):
    a, b = node.args[:2]
    alpha = node.kwargs.get("alpha", 1)
    if node.target in _REVERSED:
        a, b = b, a
        alpha = node.args[2] if len(node.args) > 2 else alpha
    attrs = {"op": op}
    if isinstance(b, Node) and isinstance(b.meta.get("val"), torch.Tensor):
        inputs = [ctx.tensor(a), ctx.tensor(b)]
        if alpha != 1:
            attrs["alpha"] = alpha
    else:
        # A Python scalar, or a dynamic size (whose value is a symbol expression).
        inputs = [ctx.tensor(a), None]
        b = ctx.value(b)
        attrs["scalar"] = b if alpha == 1 else b * alpha
    return ctx.add("binary", inputs, attrs)


@converter(*_BINARY, supports=_binary_check)
def convert_binary(ctx, node):
    return _binary(ctx, node, _BINARY[node.target])


@converter(*_DIV_WITH_MODE, supports=_div_check)
def convert_div_with_mode(ctx, node):
    return _binary(ctx, node, _DIV_MODES[node.kwargs.get("rounding_mode")])


@converter(aten.where.self)
def convert_where(ctx, node):
    condition, a, b = node.args
    return ctx.add("where", [ctx.tensor(condition), ctx.tensor(a), ctx.tensor(b)])
