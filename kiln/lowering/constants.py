"""Reading and adding the frozen weights (get_attr nodes) of a captured graph."""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node


def constant_of(gm: GraphModule, node) -> torch.Tensor | None:
    if isinstance(node, Node) and node.op == "get_attr":
        return getattr(gm, node.target)
    return None


def add_constant(gm: GraphModule, value: torch.Tensor, before: Node, hint: str) -> Node:
    base = "w_" + hint.replace(".", "_")
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    gm.register_buffer(name, value)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(name)
    node.meta["val"] = _fake_like(value, before)
    return node


def _fake_like(value: torch.Tensor, near: Node):
    # Keep meta["val"] a FakeTensor from the graph's own fake mode where there is one, so later
    # passes read shapes the same way for constants and activations.
    for n in near.graph.nodes:
        fake = n.meta.get("val")
        mode = getattr(fake, "fake_mode", None)
        if mode is not None:
            return mode.from_tensor(value, static_shapes=True)
    return value


def drop_unused_constants(gm: GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_buffers()):
        if "." not in name and name not in used:
            delattr(gm, name)
