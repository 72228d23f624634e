"""Aliasing prims ops rewritten to their aten forms between torch.export and its decompositions.

torch.export records a call to `torch.ops.prims.broadcast_in_dim` (or another prim whose output
is a view of its input) as it is, but functionalization, which `run_decompositions` runs first,
refuses any non-aten op with an aliasing output ("Tensor(a)"), and a decomposition table entry
comes too late to help. So capture rewrites these nodes in the exported (pre-dispatch) graph
into the aten view ops that compute the same view, which functionalize like any other.

One registered function per prim: it receives the graph and the node, inserts the aten nodes
before it and returns the node that replaces it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.fx import Graph, Node

aten = torch.ops.aten
prims = torch.ops.prims

Rewrite = Callable[[Graph, Node], Node]
ALIASING_PRIM_REWRITES: dict[torch._ops.OpOverload, Rewrite] = {}

# Meta of the replaced node that still describes the new nodes (where in the user's code they come from).
_PROVENANCE = ("stack_trace", "nn_module_stack", "source_fn_stack", "from_node", "seq_nr")


def rewrites(op: torch._ops.OpOverload):
    def register(fn: Rewrite) -> Rewrite:
        ALIASING_PRIM_REWRITES[op] = fn
        return fn

    return register


@rewrites(prims.broadcast_in_dim.default)
def broadcast_in_dim(graph: Graph, node: Node) -> Node:
    """Input dim i becomes output dim broadcast_dimensions[i]; the other output dims are new (unsqueeze), then expand."""
    a, shape, kept = _args(node, "a", "shape", "broadcast_dimensions")
    out = a
    for d in range(len(shape)):
        if d not in kept:
            out = graph.call_function(aten.unsqueeze.default, (out, d))
    return graph.call_function(aten.expand.default, (out, list(shape)))


@rewrites(prims.squeeze.default)
def squeeze(graph: Graph, node: Node) -> Node:
    a, dims = _args(node, "a", "dimensions")
    return graph.call_function(aten.squeeze.dims, (a, list(dims)))


@rewrites(prims.transpose.default)
def transpose(graph: Graph, node: Node) -> Node:
    a, permutation = _args(node, "a", "permutation")
    return graph.call_function(aten.permute.default, (a, list(permutation)))


@rewrites(prims.collapse_view.default)
def collapse_view(graph: Graph, node: Node) -> Node:
    """Dims start..end (both included) become one."""
    a, start, end = _args(node, "a", "start", "end")
    if start == end:
        return graph.call_function(aten.alias.default, (a,))
    return graph.call_function(aten.flatten.using_ints, (a, start, end))


@rewrites(prims.split_dim.default)
def split_dim(graph: Graph, node: Node) -> Node:
    a, dim, outer = _args(node, "a", "dim", "outer_length")
    return graph.call_function(aten.unflatten.int, (a, dim, [outer, -1]))


@rewrites(prims.view_of.default)
def view_of(graph: Graph, node: Node) -> Node:
    (a,) = _args(node, "a")
    return graph.call_function(aten.alias.default, (a,))


def rewrite_aliasing_prims(program: torch.export.ExportedProgram) -> int:
    """Rewrite every registered prim in the program's graphs (control-flow branches included); returns how many."""
    count = 0
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        graph, before = gm.graph, count
        for node in list(graph.nodes):
            rewrite = ALIASING_PRIM_REWRITES.get(node.target) if node.op == "call_function" else None
            if rewrite is None:
                continue
            with graph.inserting_before(node):
                first_new = node.prev
                out = rewrite(graph, node)
            for new in _nodes_between(first_new, node):
                new.meta.update({k: node.meta[k] for k in _PROVENANCE if k in node.meta})
            out.meta = dict(node.meta)  # val: the same shape, dtype and strides' meaning as the prim's output
            node.replace_all_uses_with(out)
            graph.erase_node(node)
            count += 1
        if count > before:
            gm.recompile()
    return count


def _args(node: Node, *names: str) -> list:
    schema = node.target._schema
    values = list(node.args) + [node.kwargs[a.name] for a in schema.arguments[len(node.args) :] if a.name in node.kwargs]
    by_name = dict(zip((a.name for a in schema.arguments), values))
    return [by_name[name] for name in names]


def _nodes_between(before: Node, end: Node) -> list[Node]:
    out, node = [], before.next
    while node is not end:
        out.append(node)
        node = node.next
    return out
