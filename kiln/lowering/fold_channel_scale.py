"""A constant per-channel multiply after a conv or a linear becomes part of that layer's weights.

Layer scale (EfficientFormer, PoolFormer, CaiT, ...) multiplies a branch's last conv or linear by a
learned vector, `x + gamma * conv(y)`: as its own op it keeps the residual add out of the conv's
epilogue (the fused conv epilogue takes a residual and an activation, not a scale in between) and
costs a pass over the activation. gamma * (W y + b) = (gamma W) y + gamma b, so the multiply folds
into the weights exactly as an inference BatchNorm does (fold_batch_norm.py), in float64 with one
rounding. Only for a constant multiplier that varies along the output channels alone (dim 1 of a
conv's output, the last dim of a linear's), when the layer's only reader is the multiply, and never
for a transposed conv, whose weight is laid out [in, out / groups, ...].
"""

import torch
from torch.fx import GraphModule, Node

from kiln.lowering.constants import constant_of, has_frozen_weights, rescale_output_channels

aten = torch.ops.aten


def fold_channel_scale(gm: GraphModule) -> GraphModule:
    graph = gm.graph
    for mul in list(graph.nodes):
        if mul.op != "call_function" or mul.target is not aten.mul.Tensor or len(mul.args) != 2:
            continue
        for layer, other in (mul.args, mul.args[::-1]):
            scale = constant_of(gm, other)
            if scale is None or not _is_layer(layer) or len(layer.users) != 1 or not has_frozen_weights(gm, layer):
                continue
            channel_dim = 1 if layer.target is aten.convolution.default else -1
            per_channel = _per_channel(scale, layer, channel_dim)
            if per_channel is None:
                continue
            rescale_output_channels(gm, layer, per_channel)
            mul.replace_all_uses_with(layer)
            graph.erase_node(mul)
            break
    return gm


def _is_layer(node) -> bool:
    if not isinstance(node, Node) or node.op != "call_function":
        return False
    if node.target is aten.convolution.default:
        return not node.args[6]
    return node.target is aten.linear.default


def _per_channel(scale: torch.Tensor, layer: Node, channel_dim: int) -> torch.Tensor | None:
    """The multiplier as one value per output channel, if that is all it varies along (and it keeps the dtype)."""
    out = layer.meta.get("val")
    weight = layer.args[1]
    if not isinstance(out, torch.Tensor) or not isinstance(weight, Node) or not scale.is_floating_point():
        return None
    if scale.dtype != out.dtype or scale.dim() > out.dim():
        return None
    channels = out.shape[channel_dim]
    shape = [1] * (out.dim() - scale.dim()) + list(scale.shape)
    wanted = [1] * out.dim()
    wanted[channel_dim] = channels
    if shape != wanted and scale.numel() != 1:
        return None
    return scale.reshape(-1).expand(channels) if scale.numel() == 1 else scale.reshape(channels)
