"""Activations and other one-input pointwise ops → `unary` layers (the op name is an attribute)."""

import torch

from kiln.engine.convert.registry import converter

aten = torch.ops.aten

_SIMPLE = {
    aten.relu.default: "relu",
    aten.sigmoid.default: "sigmoid",
    aten.tanh.default: "tanh",
    aten.silu.default: "silu",
    aten.hardswish.default: "hardswish",
    aten.hardsigmoid.default: "hardsigmoid",
    aten.sqrt.default: "sqrt",
    aten.rsqrt.default: "rsqrt",
    aten.exp.default: "exp",
    aten.log.default: "log",
    aten.neg.default: "neg",
    aten.abs.default: "abs",
    aten.reciprocal.default: "reciprocal",
    aten.erf.default: "erf",
    aten.sin.default: "sin",
    aten.cos.default: "cos",
    aten.logical_not.default: "logical_not",
}


@converter(*_SIMPLE)
def convert_simple_unary(ctx, node):
    return ctx.add("unary", [ctx.tensor(node.args[0])], {"op": _SIMPLE[node.target]})


@converter(aten.gelu.default)
def convert_gelu(ctx, node):
    approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    return ctx.add("unary", [ctx.tensor(node.args[0])], {"op": "gelu_tanh" if approximate == "tanh" else "gelu"})


@converter(aten.leaky_relu.default)
def convert_leaky_relu(ctx, node):
    slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
    return ctx.add("unary", [ctx.tensor(node.args[0])], {"op": "leaky_relu", "alpha": float(slope)})


@converter(aten.elu.default)
def convert_elu(ctx, node):
    args = list(node.args) + [None] * 4
    alpha = args[1] if args[1] is not None else node.kwargs.get("alpha", 1.0)
    scale = args[2] if args[2] is not None else node.kwargs.get("scale", 1.0)
    input_scale = args[3] if args[3] is not None else node.kwargs.get("input_scale", 1.0)
    return ctx.add(
        "unary", [ctx.tensor(node.args[0])], {"op": "elu", "alpha": float(alpha), "scale": float(scale), "input_scale": float(input_scale)}
    )


@converter(aten.softplus.default)
def convert_softplus(ctx, node):
    args = list(node.args) + [None] * 3
    beta = args[1] if args[1] is not None else node.kwargs.get("beta", 1.0)
    threshold = args[2] if args[2] is not None else node.kwargs.get("threshold", 20.0)
    return ctx.add("unary", [ctx.tensor(node.args[0])], {"op": "softplus", "beta": float(beta), "threshold": float(threshold)})


def _scalar_or_none(value):
    return None if value is None else float(value)


def _has_no_tensor_bounds(node):
    if any(isinstance(a, torch.fx.Node) for a in node.args[1:]):
        return "clamp with tensor bounds"
    return None


@converter(aten.clamp.default, aten.hardtanh.default, supports=_has_no_tensor_bounds)
def convert_clamp(ctx, node):
    args = list(node.args) + [None] * 3
    if node.target is aten.hardtanh.default:
        lo = args[1] if args[1] is not None else node.kwargs.get("min_val", -1.0)
        hi = args[2] if args[2] is not None else node.kwargs.get("max_val", 1.0)
    else:
        lo = args[1] if args[1] is not None else node.kwargs.get("min")
        hi = args[2] if args[2] is not None else node.kwargs.get("max")
    op = "relu6" if lo == 0 and hi == 6 else "clamp"
    return ctx.add("unary", [ctx.tensor(node.args[0])], {"op": op, "min": _scalar_or_none(lo), "max": _scalar_or_none(hi)})
