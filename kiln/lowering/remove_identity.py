import torch
from torch.fx import GraphModule
from torch.fx.experimental.symbolic_shapes import statically_known_true

aten = torch.ops.aten

_IDENTITY_OPS = {aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default}
_DROPOUT_OPS = {aten.dropout.default}
# Checks torch.export leaves behind for shapes it already proved; the engine validates inputs itself.
_ASSERT_OPS = {
    aten._assert_tensor_metadata.default,
    aten._assert_scalar.default,
    aten.sym_constrain_range_for_size.default,
    aten._assert_async.msg,
}


def _same_shape(node) -> bool:
    """The output has the input's shape (provably, for symbolic sizes): an expand, view or reshape that moves nothing."""
    before, after = _val(node.args[0]), _val(node)
    if before is None or after is None or before.dim() != after.dim():
        return False
    return all(statically_known_true(a == b) for a, b in zip(before.shape, after.shape))


def _zero_pad(node) -> bool:
    return all(isinstance(p, int) and p == 0 for p in node.args[1])


def _identity_permute(node) -> bool:
    dims = node.args[1]
    rank = len(dims)
    return [d % rank for d in dims] == list(range(rank))


def _full_slice(node) -> bool:
    args = list(node.args) + [None] * 5
    step = args[4] if args[4] is not None else 1
    return step == 1 and _same_shape(node)


def _val(node):
    value = node.meta.get("val") if hasattr(node, "meta") else None
    return value if isinstance(value, torch.Tensor) else None


# Data-movement ops that are identities for some arguments: Swin pads to a multiple of its
# window (a zero pad at 224x224), matmul's decomposition expands to the shape it has.
_NOOP_WHEN = {
    aten.expand.default: _same_shape,
    aten.view.default: _same_shape,
    aten.reshape.default: _same_shape,
    aten._unsafe_view.default: _same_shape,
    aten.constant_pad_nd.default: _zero_pad,
    aten.pad.default: _zero_pad,
    aten.permute.default: _identity_permute,
    aten.slice.Tensor: _full_slice,
}


def remove_identity(gm: GraphModule) -> GraphModule:
    """Drop clones, aliases, detaches, eval-mode dropout, export's shape asserts and data movement that moves
    nothing (a zero pad, an expand or reshape to the same shape, a full slice, an identity permute)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        noop = _NOOP_WHEN.get(node.target)
        if noop is not None and isinstance(node.args[0], torch.fx.Node) and noop(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.target in _IDENTITY_OPS or (node.target in _DROPOUT_OPS and _is_eval_dropout(node)):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.target in _ASSERT_OPS and not node.users:
            graph.erase_node(node)
    return gm


def _is_eval_dropout(node) -> bool:
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    return not train or p == 0
