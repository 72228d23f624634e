"""Ops that move elements without changing them → `reshape`, `permute`, `expand`, `flip`,
`repeat`, `concat`, `split`.

Target shapes are read from the node's output (meta["val"]), not from its arguments: the
output already has -1 resolved and dynamic dims as symbol expressions, where the arguments
hold the example sizes' FX nodes or -1.
"""

import torch

from kiln.engine.convert.registry import converter
from kiln.engine.ir.symbolic import shape_of

aten = torch.ops.aten


def out_shape(node) -> list:
    return shape_of(node.meta["val"].shape)


def _rank(node) -> int:
    return node.args[0].meta["val"].dim()


@converter(
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.unsqueeze.default,
)
def convert_reshape(ctx, node):
    return ctx.add("reshape", [ctx.tensor(node.args[0])], {"shape": out_shape(node)})


@converter(aten.permute.default)
def convert_permute(ctx, node):
    rank = _rank(node)
    return ctx.add("permute", [ctx.tensor(node.args[0])], {"dims": [d % rank for d in node.args[1]]})


@converter(aten.expand.default)
def convert_expand(ctx, node):
    return ctx.add("expand", [ctx.tensor(node.args[0])], {"shape": out_shape(node)})


@converter(aten.flip.default)
def convert_flip(ctx, node):
    rank = _rank(node)
    return ctx.add("flip", [ctx.tensor(node.args[0])], {"dims": [d % rank for d in node.args[1]]})


def _static_repeats(node):
    if any(isinstance(r, torch.fx.Node) for r in node.args[1]):
        return "repeat by a dynamic count"
    return None


@converter(aten.repeat.default, supports=_static_repeats)
def convert_repeat(ctx, node):
    return ctx.add("repeat", [ctx.tensor(node.args[0])], {"repeats": [int(r) for r in node.args[1]]})


def _concat_dim(node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim % node.meta["val"].dim()


def _is_skipped_by_cat(t) -> bool:
    # torch.cat skips 1-D empty tensors whatever the rank of the others (a legacy rule HF caches rely on).
    shape = t.meta["val"].shape
    return len(shape) == 1 and isinstance(shape[0], int) and shape[0] == 0


def _concat_check(node):
    rank = node.meta["val"].dim()
    if any(t.meta["val"].dim() != rank and not _is_skipped_by_cat(t) for t in node.args[0]):
        return "cat of tensors of different ranks"
    return None


@converter(aten.cat.default, supports=_concat_check)
def convert_cat(ctx, node):
    rank = node.meta["val"].dim()
    kept = [t for t in node.args[0] if t.meta["val"].dim() == rank or not _is_skipped_by_cat(t)]
    if len(kept) == 1:
        return ctx.add("copy", [ctx.tensor(kept[0])])
    return ctx.add("concat", [ctx.tensor(t) for t in kept], {"dim": _concat_dim(node)})


@converter(aten.split_with_sizes.default, aten.split.Tensor)
def convert_split(ctx, node):
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim %= _rank(node)
    sizes = [shape_of(part.shape)[dim] for part in node.meta["val"]]
    return ctx.add("split", [ctx.tensor(node.args[0])], {"dim": dim, "sizes": sizes})
