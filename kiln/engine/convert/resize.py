"""Upsampling (F.interpolate: nearest, nearest-exact, linear, bilinear, bicubic) → one `resize` layer kind.

Capture keeps these ops whole (PRESERVED_OPS). Either an output `size` (Dims, so a size computed
from a dynamic dim stays symbolic) or `scales` is recorded, never both: with scales torch maps
output to input coordinates by 1/scale, not by in/out size, and the two differ when
in * scale is not an integer.
"""

import torch

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten

_MODES = {
    aten.upsample_nearest1d.vec: "nearest",
    aten.upsample_nearest2d.vec: "nearest",
    aten._upsample_nearest_exact2d.vec: "nearest-exact",
    aten.upsample_linear1d.vec: "linear",
    aten.upsample_bilinear2d.vec: "bilinear",
    aten.upsample_bicubic2d.vec: "bicubic",
}


@converter(*_MODES)
def convert_resize(ctx, node):
    a = node_arguments(node)
    size = a["output_size"]
    scales = a["scale_factors"]
    attrs = {
        "mode": _MODES[node.target],
        "size": None if size is None else list(ctx.value(list(size))),
        "scales": None if scales is None else [float(s) for s in scales],
        "align_corners": a.get("align_corners"),
    }
    return ctx.add("resize", [ctx.tensor(a["input"])], attrs)
