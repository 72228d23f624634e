"""aten.convolution (1d/2d/3d, grouped, depthwise, transposed) and aten.conv_transpose2d → `conv` layers."""

import torch

from kiln.engine.convert.registry import converter, node_arguments

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


def _pair(value) -> list[int]:
    # The schema takes int[2]; a one-element list or a bare int means the same value on both axes.
    values = [value] if isinstance(value, int) else list(value)
    return values * 2 if len(values) == 1 else values


def _conv_transpose2d_check(node):
    rank = node.args[0].meta["val"].dim()
    return None if rank in (3, 4) else f"conv_transpose2d on a rank-{rank} input"


# Kept whole by capture (see PRESERVED_OPS); it is the same transposed `conv` layer aten.convolution would give.
@converter(aten.conv_transpose2d.input, supports=_conv_transpose2d_check)
def convert_conv_transpose2d(ctx, node):
    a = node_arguments(node)
    attrs = {
        "stride": _pair(a["stride"]),
        "padding": _pair(a["padding"]),
        "dilation": _pair(a["dilation"]),
        "transposed": True,
        "output_padding": _pair(a["output_padding"]),
        "groups": int(a["groups"]),
    }
    return ctx.add("conv", [ctx.tensor(a["input"]), ctx.tensor(a["weight"]), ctx.maybe_tensor(a["bias"])], attrs)
