"""pixel_shuffle / pixel_unshuffle, grid_sampler_2d, _cdist_forward and _pdist_forward → one layer kind each."""

import torch

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten


@converter(aten.pixel_shuffle.default)
def convert_pixel_shuffle(ctx, node):
    a = node_arguments(node)
    return ctx.add("pixel_shuffle", [ctx.tensor(a["input"])], {"op": "shuffle", "factor": int(a["upscale_factor"])})


@converter(aten.pixel_unshuffle.default)
def convert_pixel_unshuffle(ctx, node):
    a = node_arguments(node)
    return ctx.add("pixel_shuffle", [ctx.tensor(a["input"])], {"op": "unshuffle", "factor": int(a["downscale_factor"])})


@converter(aten.grid_sampler_2d.default)
def convert_grid_sampler(ctx, node):
    a = node_arguments(node)
    attrs = {"interpolation": int(a["interpolation_mode"]), "padding": int(a["padding_mode"]), "align_corners": bool(a["align_corners"])}
    return ctx.add("grid_sample", [ctx.tensor(a["input"]), ctx.tensor(a["grid"])], attrs)


@converter(aten._cdist_forward.default)
def convert_cdist(ctx, node):
    a = node_arguments(node)
    return ctx.add("cdist", [ctx.tensor(a["x1"]), ctx.tensor(a["x2"])], {"p": float(a["p"]), "compute_mode": a["compute_mode"]})


@converter(aten._pdist_forward.default)
def convert_pdist(ctx, node):
    a = node_arguments(node)
    return ctx.add("pdist", [ctx.tensor(a["input"])], {"p": float(a["p"])})
