"""Sizes an engine block cannot take: ones computed from tensor values, and ones made in PyTorch.

An engine reads every dynamic size at call time from a dimension of one of its input tensors
(bind_symbols). Two kinds of size break that, and the partitioner keeps the nodes that need
them in PyTorch instead of letting the build fail:

- a size torch.export could only name after looking at the data (an unbacked `u0` from
  nonzero, masked_select, .item()), which is no input's dimension;
- a Python number (a SymInt or SymFloat: x.shape[0], sym_float(x.shape[2]) / 4) made by a node
  that runs in PyTorch or in another block: a block takes tensors only.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from kiln.engine.ir.symbolic import dim_of, symbols_in

DATA_DEPENDENT = "shape computed from tensor values (data-dependent size {}), which no input dimension gives"
SIZE_FROM_OUTSIDE = "takes the number {} made outside its engine block (a block takes tensors only)"
SIZE_TO_OUTSIDE = "a number used outside its engine block (a block returns tensors only)"
UNREADABLE = "needs the size {}, which no input of its engine block has as a whole dimension"


def input_symbols(nodes: list[Node]) -> set[str]:
    """Symbols that are a whole dimension of some graph input: the only sizes an engine can read."""
    found: set[str] = set()
    for node in nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(val, torch.Tensor):
            found.update(d for d in (_dim(s) for s in val.shape) if isinstance(d, str) and d.isidentifier())
    return found


def data_dependent_reason(node: Node, known: set[str]) -> str | None:
    """Why `node` cannot be on the engine because of a size no input gives, or None."""
    for value in [node.meta.get("val"), *(a.meta.get("val") for a in node.all_input_nodes)]:
        for sym in sorted(_symbols_of(value) - known):
            return DATA_DEPENDENT.format(sym)
    return None


def outside_numbers(group: set[Node]) -> dict[Node, str]:
    """Nodes of an engine block that pass a number across its border (in or out), with the reason."""
    found = {}
    for node in group:
        if _is_number(node) and any(u not in group for u in node.users):
            found[node] = SIZE_TO_OUTSIDE
            continue
        for arg in node.all_input_nodes:
            if arg not in group and arg.op == "call_function" and _is_number(arg):
                found[node] = SIZE_FROM_OUTSIDE.format(f"{arg.name} ({type(arg.meta.get('val')).__name__})")
                break
    return found


def unreadable_sizes(group: set[Node]) -> dict[Node, str]:
    """Nodes of an engine block that use a symbol none of the block's input tensors has as a whole dim.

    The runtime reads each symbol from such a dim (bind_symbols); a block whose inputs only carry
    it inside an expression (s0 + s0//2 + 1 after a pad) could not learn its value.
    """
    readable: set[str] = set()
    for node in group:
        for arg in node.all_input_nodes:
            val = arg.meta.get("val")
            if arg not in group and isinstance(val, torch.Tensor):
                readable.update(d for d in (_dim(s) for s in val.shape) if isinstance(d, str) and d.isidentifier())
    found = {}
    for node in group:
        values = [node.meta.get("val"), *(a.meta.get("val") for a in node.all_input_nodes)]
        missing = sorted(set().union(*(_symbols_of(v) for v in values)) - readable)
        if missing:
            found[node] = UNREADABLE.format(missing[0])
    return found


def _is_number(node: Node) -> bool:
    return not isinstance(node.meta.get("val"), (torch.Tensor, tuple, list))


def _symbols_of(value) -> set[str]:
    if isinstance(value, (tuple, list)):
        return set().union(*(_symbols_of(v) for v in value)) if value else set()
    if isinstance(value, torch.Tensor):
        return set().union(*(symbols_in(_dim(s)) for s in value.shape)) if value.dim() else set()
    if isinstance(value, torch.SymInt):
        return symbols_in(_dim(value))
    return set()


def _dim(size):
    try:
        return dim_of(size)
    except TypeError:
        return str(size)

