"""softmax / log_softmax, in their public (`dtype=`) and internal (`half_to_float`) forms → `softmax` layers."""

import torch

from kiln.engine.convert.registry import converter, node_arguments
from kiln.engine.ir.dtypes import dtype_name

aten = torch.ops.aten

_SOFTMAX = {
    aten.softmax.int: "softmax",
    aten._softmax.default: "softmax",
    aten.log_softmax.int: "log_softmax",
    aten._log_softmax.default: "log_softmax",
}


@converter(*_SOFTMAX)
def convert_softmax(ctx, node):
    a = node_arguments(node)
    out_dtype = ctx.output_specs()[0][1]
    # Both dtype= and half_to_float mean "cast the input, then compute": record the dtype only when it changes.
    cast = out_dtype != ctx.tensor(a["input"]).dtype
    attrs = {"op": _SOFTMAX[node.target], "dim": int(a["dim"]), "dtype": dtype_name(out_dtype) if cast else None}
    return ctx.add("softmax", [ctx.tensor(a["input"])], attrs)
