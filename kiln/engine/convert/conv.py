"""aten.convolution (1d/2d/3d, grouped, depthwise, transposed) → `conv` layers."""

import torch

from kiln.engine.convert.registry import converter

aten = torch.ops.aten


def _conv_check(node):
    x = node.args[0].meta["val"]
    if x.dim() not in (3, 4, 5):
        return f"convolution on a rank-{x.dim()} input"
    return None


@converter(aten.convolution.default, supports=_conv_check)
def convert_convolution(ctx, node):
    x, w, b, stride, padding, dilation, transposed, output_padding, groups = node.args
    attrs = {
        "stride": list(stride),
        "padding": list(padding),
        "dilation": list(dilation),
        "transposed": bool(transposed),
        "output_padding": list(output_padding),
        "groups": int(groups),
    }
    return ctx.add("conv", [ctx.tensor(x), ctx.tensor(w), ctx.maybe_tensor(b)], attrs)
