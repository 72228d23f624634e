"""Reductions over dims or over the whole tensor → one `reduce` layer kind; the op is an attribute.

Every form is brought to the same attrs: `dims` (a list, or None for all dims), `keepdim`, and,
where the op has them, `dtype` (the accumulation/output dtype asked for), `correction` (var)
and `ord` (vector norm). `max.dim`/`min.dim` keep their two outputs (values, indices).
"""

import math

import torch

from kiln.engine.convert.registry import converter, node_arguments
from kiln.engine.ir.dtypes import dtype_name

aten = torch.ops.aten

_REDUCE = {
    aten.sum.dim_IntList: "sum",
    aten.sum.default: "sum",
    aten.mean.dim: "mean",
    aten.mean.default: "mean",
    aten.amax.default: "amax",
    aten.amin.default: "amin",
    aten.max.default: "amax",
    aten.min.default: "amin",
    aten.max.dim: "max",
    aten.min.dim: "min",
    aten.argmax.default: "argmax",
    aten.argmin.default: "argmin",
    aten.prod.dim_int: "prod",
    aten.prod.default: "prod",
    aten.any.dims: "any",
    aten.any.dim: "any",
    aten.any.default: "any",
    aten.all.dims: "all",
    aten.all.dim: "all",
    aten.all.default: "all",
    aten.var.correction: "var",
    aten.linalg_vector_norm.default: "norm",
}


def _dims(value) -> list[int] | None:
    # An empty list means "every dim" for sum/mean/amax/amin, the same as None.
    if value is None:
        return None
    dims = [value] if isinstance(value, int) else list(value)
    return dims or None


def _reduce_check(node):
    a = node_arguments(node)
    for key in ("correction", "ord"):
        if isinstance(a.get(key), torch.fx.Node):
            return f"{key} given as a tensor"
    return None


@converter(*_REDUCE, supports=_reduce_check)
def convert_reduce(ctx, node):
    a = node_arguments(node)
    attrs = {"op": _REDUCE[node.target], "dims": _dims(a.get("dim")), "keepdim": bool(a.get("keepdim", False))}
    if a.get("dtype") is not None:
        # The dtype the node really produces: float64 is already truncated to float32 where asked.
        attrs["dtype"] = dtype_name(ctx.output_specs()[0][1])
    if node.target is aten.var.correction:
        attrs["correction"] = 1 if a["correction"] is None else a["correction"]
    if node.target is aten.linalg_vector_norm.default:
        ord_ = float(a["ord"])
        # JSON has no infinity: the max-norm's ord travels as the string "inf" (float() reads it back).
        attrs["ord"] = ord_ if math.isfinite(ord_) else str(ord_)
    return ctx.add("reduce", [ctx.tensor(a["input"])], attrs)
