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


def shape_of(node) -> tuple | None:
    """The shape a node's value has in the captured graph, or None where it is not a tensor (or not known)."""
    val = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def has_frozen_weights(gm: GraphModule, layer: Node) -> bool:
    """A conv's or linear's weight (and bias, if it has one) are constants a fold can rewrite."""
    bias = layer.args[2] if len(layer.args) > 2 else None
    return constant_of(gm, layer.args[1]) is not None and (bias is None or constant_of(gm, bias) is not None)


def rescale_output_channels(gm: GraphModule, layer: Node, scale: torch.Tensor, shift: torch.Tensor | None = None) -> None:
    """Give a conv or linear the weights of `scale * layer(x) + shift`, per output channel (weight dim 0).

    Computed in float64 and rounded once to the weights' dtype. A layer without bias gets one only when
    there is a shift to carry (an inference BatchNorm's; a layer scale has none)."""
    weight = constant_of(gm, layer.args[1])
    bias_arg = layer.args[2] if len(layer.args) > 2 else None
    bias = constant_of(gm, bias_arg) if bias_arg is not None else None
    scale = scale.double()
    new_w = (weight.double() * scale.reshape(weight.shape[0], *([1] * (weight.dim() - 1)))).to(weight.dtype)
    b_node = bias_arg
    if bias is not None or shift is not None:
        new_b = (bias.double() * scale if bias is not None else 0) + (shift.double() if shift is not None else 0)
        b_node = add_constant(gm, torch.as_tensor(new_b).to(weight.dtype), layer, f"{layer.name}_folded_bias")
    w_node = add_constant(gm, new_w, layer, f"{layer.name}_folded_weight")
    layer.args = (layer.args[0], w_node, b_node, *layer.args[3:])
