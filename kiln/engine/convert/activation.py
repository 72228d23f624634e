"""Activations and other one-input pointwise ops → `unary` layers (the op name is an attribute)."""

import torch

from kiln.engine.convert.registry import converter, node_arguments
from kiln.engine.ir.symbolic import shape_of

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
    aten.bitwise_not.default: "bitwise_not",
    aten.sign.default: "sign",
    aten.floor.default: "floor",
    aten.ceil.default: "ceil",
    aten.round.default: "round",
    aten.trunc.default: "trunc",
    aten.isnan.default: "isnan",
    aten.isinf.default: "isinf",
    aten.log1p.default: "log1p",
    aten.log2.default: "log2",
    aten.expm1.default: "expm1",
    aten.tan.default: "tan",
    aten.atan.default: "atan",
    aten.log10.default: "log10",
    aten.asin.default: "asin",
    aten.acos.default: "acos",
    aten.asinh.default: "asinh",
    aten.acosh.default: "acosh",
    aten.atanh.default: "atanh",
    aten.sinh.default: "sinh",
    aten.cosh.default: "cosh",
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
    # An int bound stays an int: torch.clamp(int_tensor, 0.0, 1.0) would promote the result to float
    # (replication padding's index clamp relies on staying int64).
    return None if value is None else value if isinstance(value, int) and not isinstance(value, bool) else float(value)


def _has_no_tensor_bounds(node):
    if any(isinstance(a, torch.fx.Node) for a in node.args[1:]):
        return "clamp with tensor bounds"
    return None


@converter(aten.clamp.Tensor)
def convert_clamp_tensor(ctx, node):
    # clamp is defined as min(max(x, lo), hi) with broadcasting and promotion, so hi wins where lo > hi.
    args = list(node.args) + [None] * 2
    x = node.args[0]
    lo = args[1] if args[1] is not None else node.kwargs.get("min")
    hi = args[2] if args[2] is not None else node.kwargs.get("max")
    if lo is None or hi is None:
        bound, op = (lo, "maximum") if hi is None else (hi, "minimum")
        return ctx.add("binary", [ctx.tensor(x), ctx.tensor(bound)], {"op": op})
    xv, lov = x.meta["val"], lo.meta["val"]
    shape = shape_of(torch.broadcast_shapes(xv.shape, lov.shape))
    low_bounded = ctx.add_like("binary", [ctx.tensor(x), ctx.tensor(lo)], shape, torch.result_type(xv, lov), {"op": "maximum"})
    return ctx.add("binary", [low_bounded, ctx.tensor(hi)], {"op": "minimum"})


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


@converter(aten.clamp_min.Tensor, aten.clamp_max.Tensor)
def convert_clamp_one_tensor_bound(ctx, node):
    op = "maximum" if node.target is aten.clamp_min.Tensor else "minimum"
    return ctx.add("binary", [ctx.tensor(node.args[0]), ctx.tensor(node.args[1])], {"op": op})


def _inference_dropout(node):
    a = node_arguments(node)
    if a["train"] and a["p"] != 0:
        return "dropout in training mode (random masks; compile the module in eval mode)"
    return None


@converter(aten.native_dropout.default, supports=_inference_dropout)
def convert_native_dropout(ctx, node):
    # At inference dropout passes its input through and keeps every element (mask all True).
    a = node_arguments(node)
    out_spec, mask_spec = ctx.output_specs()
    out = ctx.add("copy", [ctx.tensor(a["input"])], outputs=[out_spec, None])[0]
    keep = ctx.constant(torch.ones((), dtype=torch.bool), "dropout_mask")
    mask = ctx.add("expand", [keep], {"shape": mask_spec[0]}, outputs=[None, mask_spec])[1]
    return [out, mask]
