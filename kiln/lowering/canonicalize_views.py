import torch
from torch.fx import GraphModule

from kiln.lowering.constants import shape_of

aten = torch.ops.aten

_TO_VIEW = {aten._unsafe_view.default, aten.reshape.default}


def canonicalize_views(gm: GraphModule) -> GraphModule:
    """All reshapes become aten.view, so converters and fusions see one op for "same data, new shape".

    A view of a view with no other reader becomes one view of the first input, and a view to the shape its
    input already has disappears: the engine's reshape layers are logical (they copy where strides demand),
    so the chain and the single view compute the same, and folding LeViT's norms into its linears
    (fold_batch_norm) leaves `flatten(0, 1)` then `reshape_as` around each of 60 linears, which would
    otherwise stand between every linear and the activation or residual add its epilogue could take."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _TO_VIEW | {aten.view.default}:
            continue
        node.target = aten.view.default
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.target is aten.view.default and len(source.users) == 1:
            node.args = (source.args[0], *node.args[1:])
            graph.erase_node(source)
        if shape_of(node) is not None and shape_of(node) == shape_of(node.args[0]):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return gm
