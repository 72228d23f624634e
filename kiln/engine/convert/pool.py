"""2-D pooling (max, average, adaptive average, adaptive max) → one `pool` layer kind; `op` says which.
3-D pooling, the same four, → `pool3d`.

1-D pooling reaches here as unsqueeze + the 2-D op (core-ATen decomposition). The max ops also
return argmax indices; the engine makes the pooled values only.
"""

import operator

import torch

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten


def _pair(value) -> list[int]:
    # The schema takes int[2]; one value means both axes.
    values = [value] if isinstance(value, int) else list(value)
    return values * 2 if len(values) == 1 else values


def _pool_check(node):
    rank = node.args[0].meta["val"].dim()
    return None if rank in (3, 4) else f"2-D pooling of a rank-{rank} input"


def _max_pool_check(node):
    if any(user.target is not operator.getitem or user.args[1] != 0 for user in node.users):
        return "uses the indices output of max pooling (only the pooled values are supported)"
    return _pool_check(node)


def _window(a) -> dict:
    kernel = _pair(a["kernel_size"])
    # An empty stride means "the kernel size", as in F.max_pool2d.
    stride = _pair(a["stride"]) if a["stride"] else kernel
    return {"kernel": kernel, "stride": stride, "padding": _pair(a["padding"]), "ceil_mode": bool(a["ceil_mode"])}


def _values_only(ctx):
    specs = ctx.output_specs()
    return [specs[0]] + [None] * (len(specs) - 1)


@converter(aten.max_pool2d_with_indices.default, supports=_max_pool_check)
def convert_max_pool2d(ctx, node):
    a = node_arguments(node)
    attrs = {"op": "max", **_window(a), "dilation": _pair(a["dilation"])}
    return ctx.add("pool", [ctx.tensor(a["input"])], attrs, outputs=_values_only(ctx))


@converter(aten.avg_pool2d.default, supports=_pool_check)
def convert_avg_pool2d(ctx, node):
    a = node_arguments(node)
    attrs = {
        "op": "avg",
        **_window(a),
        "count_include_pad": bool(a["count_include_pad"]),
        "divisor_override": a["divisor_override"],
    }
    return ctx.add("pool", [ctx.tensor(a["input"])], attrs)


@converter(aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default, supports=_pool_check)
def convert_adaptive_avg_pool2d(ctx, node):
    a = node_arguments(node)
    return ctx.add("pool", [ctx.tensor(a["input"])], {"op": "adaptive_avg", "output_size": list(ctx.value(list(a["output_size"])))})


@converter(aten.adaptive_max_pool2d.default, supports=_max_pool_check)
def convert_adaptive_max_pool2d(ctx, node):
    a = node_arguments(node)
    attrs = {"op": "adaptive_max", "output_size": list(ctx.value(list(a["output_size"])))}
    return ctx.add("pool", [ctx.tensor(a["input"])], attrs, outputs=_values_only(ctx))


def _triple(value) -> list[int]:
    values = [value] if isinstance(value, int) else list(value)
    return values * 3 if len(values) == 1 else values


def _pool3d_check(node):
    rank = node.args[0].meta["val"].dim()
    return None if rank in (4, 5) else f"3-D pooling of a rank-{rank} input"


def _max_pool3d_check(node):
    if any(user.target is not operator.getitem or user.args[1] != 0 for user in node.users):
        return "uses the indices output of max pooling (only the pooled values are supported)"
    return _pool3d_check(node)


def _window3d(a) -> dict:
    kernel = _triple(a["kernel_size"])
    stride = _triple(a["stride"]) if a["stride"] else kernel
    return {"kernel": kernel, "stride": stride, "padding": _triple(a["padding"]), "ceil_mode": bool(a["ceil_mode"])}


@converter(aten.max_pool3d_with_indices.default, supports=_max_pool3d_check)
def convert_max_pool3d(ctx, node):
    a = node_arguments(node)
    attrs = {"op": "max", **_window3d(a), "dilation": _triple(a["dilation"])}
    return ctx.add("pool3d", [ctx.tensor(a["input"])], attrs, outputs=_values_only(ctx))


@converter(aten.avg_pool3d.default, supports=_pool3d_check)
def convert_avg_pool3d(ctx, node):
    a = node_arguments(node)
    attrs = {"op": "avg", **_window3d(a), "count_include_pad": bool(a["count_include_pad"]), "divisor_override": a["divisor_override"]}
    return ctx.add("pool3d", [ctx.tensor(a["input"])], attrs)


@converter(aten.adaptive_avg_pool3d.default, aten._adaptive_avg_pool3d.default, supports=_pool3d_check)
def convert_adaptive_avg_pool3d(ctx, node):
    a = node_arguments(node)
    attrs = {"op": "adaptive_avg", "output_size": list(ctx.value(list(a["output_size"])))}
    return ctx.add("pool3d", [ctx.tensor(a["input"])], attrs)


@converter(aten.adaptive_max_pool3d.default, supports=_max_pool3d_check)
def convert_adaptive_max_pool3d(ctx, node):
    a = node_arguments(node)
    attrs = {"op": "adaptive_max", "output_size": list(ctx.value(list(a["output_size"])))}
    return ctx.add("pool3d", [ctx.tensor(a["input"])], attrs, outputs=_values_only(ctx))
