"""Ops that pick part of a tensor → `slice`, `select`, `index_select`, `gather`.

Bounds and indices may be SymInt nodes (x[: x.shape[0] // 2]); they become symbol
expressions through ctx.value, so the example size never gets baked in.
"""

import operator

import torch
from torch.fx import Node

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten


def _arg(node, i, name, default):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _dim(node, dim: int) -> int:
    # A 0-d input takes dim 0 or -1, as in torch.
    return dim % max(node.args[0].meta["val"].dim(), 1)


def _static_step(node):
    if isinstance(_arg(node, 4, "step", 1), Node):
        return "slice with a dynamic step"
    return None


@converter(aten.slice.Tensor, supports=_static_step)
def convert_slice(ctx, node):
    attrs = {
        "dim": _dim(node, _arg(node, 1, "dim", 0)),
        "start": ctx.value(_arg(node, 2, "start", None)),
        "end": ctx.value(_arg(node, 3, "end", None)),
        "step": int(_arg(node, 4, "step", 1)),
    }
    return ctx.add("slice", [ctx.tensor(node.args[0])], attrs)


@converter(aten.select.int)
def convert_select(ctx, node):
    x, dim, index = node.args
    return ctx.add("select", [ctx.tensor(x)], {"dim": _dim(node, dim), "index": ctx.value(index)})


def _not_scalar(node):
    return "index_select on a 0-d tensor" if node.args[0].meta["val"].dim() == 0 else None


@converter(aten.index_select.default, supports=_not_scalar)
def convert_index_select(ctx, node):
    x, dim, index = node.args
    return ctx.add("index_select", [ctx.tensor(x), ctx.tensor(index)], {"dim": _dim(node, dim)})


@converter(aten.embedding.default)
def convert_embedding(ctx, node):
    # padding_idx, scale_grad_by_freq and sparse only change the gradient.
    weight, indices = node.args[:2]
    return ctx.add("index_select", [ctx.tensor(weight), ctx.tensor(indices)], {"dim": 0})


def _index_check(node):
    indices = [i for i in node.args[1] if i is not None]
    if not indices:
        return "indexing without an index tensor"
    if any(i.meta["val"].dtype in (torch.bool, torch.uint8) for i in indices):
        # The output has as many rows as the mask has True values: see docs/coverage.md.
        return "indexing with a boolean mask (data-dependent output shape)"
    return None


@converter(aten.index.Tensor, supports=_index_check)
def convert_index(ctx, node):
    x, indices = node.args
    used = [d for d, index in enumerate(indices) if index is not None]
    if len(used) == 1:
        return ctx.add("index_select", [ctx.tensor(x), ctx.tensor(indices[used[0]])], {"dim": used[0]})
    # Several index tensors broadcast together and pick one element per index tuple (x[i, j]).
    return ctx.add("index", [ctx.tensor(x), *(ctx.tensor(indices[d]) for d in used)], {"dims": used})


@converter(aten.gather.default)
def convert_gather(ctx, node):
    x, dim, index = node.args[:3]
    return ctx.add("gather", [ctx.tensor(x), ctx.tensor(index)], {"dim": _dim(node, dim)})


def _embedding_bag_check(node):
    if any(user.target is not operator.getitem or user.args[1] != 0 for user in node.users):
        return "uses the bookkeeping outputs of embedding_bag (only the pooled output is supported)"
    a = node_arguments(node)
    if a["per_sample_weights"] is not None and a["mode"] != 0:
        return "per_sample_weights with a mode other than sum"
    return None


@converter(aten._embedding_bag.default, aten._embedding_bag_forward_only.default, supports=_embedding_bag_check)
def convert_embedding_bag(ctx, node):
    a = node_arguments(node)
    inputs = [ctx.tensor(a["weight"]), ctx.tensor(a["indices"]), ctx.tensor(a["offsets"]), ctx.maybe_tensor(a["per_sample_weights"])]
    attrs = {"mode": int(a["mode"]), "include_last_offset": bool(a["include_last_offset"]), "padding_idx": int(a["padding_idx"])}
    specs = ctx.output_specs()
    return ctx.add("embedding_bag", inputs, attrs, outputs=[specs[0]] + [None] * (len(specs) - 1))
