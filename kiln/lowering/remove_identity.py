import torch
from torch.fx import GraphModule

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


def remove_identity(gm: GraphModule) -> GraphModule:
    """Drop clones, aliases, detaches, eval-mode dropout and export's shape asserts: none computes anything."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _IDENTITY_OPS or (node.target in _DROPOUT_OPS and _is_eval_dropout(node)):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.target in _ASSERT_OPS and not node.users:
            graph.erase_node(node)
    return gm


def _is_eval_dropout(node) -> bool:
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    return not train or p == 0
