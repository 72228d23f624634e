"""Inference BatchNorm after a conv or a linear becomes that layer's weights: one layer, no norm pass.

A conv (not transposed) feeding a BatchNorm of its channels, or a linear feeding a BatchNorm of its
output features, possibly through views that only merge the leading dims (LeViT's LinearNorm:
`bn(linear(x).flatten(0, 1)).reshape_as(...)`, 60 of LeViT-128's layers), computes
    gamma * (W x + b - mean) / sqrt(var + eps) + beta = (scale * W) x + (scale * (b - mean) + beta)
with scale = gamma / sqrt(var + eps) per output channel. Only when every weight and statistic is
a frozen constant and each node on the way has the next as its only user. Folding is done in
float64 so that the folded FP32 weights round once rather than compounding errors.
"""

import operator

import torch
from torch.fx import GraphModule, Node

from kiln.lowering.constants import constant_of, has_frozen_weights, rescale_output_channels, shape_of

aten = torch.ops.aten
_BATCH_NORM = aten._native_batch_norm_legit_no_training.default
# Views a linear's output may pass through on its way to the norm, if they keep its features the last dim.
_VIEWS = frozenset({aten.view.default, aten.reshape.default, aten._unsafe_view.default})


def fold_batch_norm(gm: GraphModule) -> GraphModule:
    graph = gm.graph
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target is not _BATCH_NORM:
            continue
        layer = _foldable_producer(bn)
        if layer is None:
            continue
        users = list(bn.users)
        if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
            continue
        gamma, beta, mean, var = (constant_of(gm, a) if a is not None else None for a in bn.args[1:5])
        if not has_frozen_weights(gm, layer) or mean is None or var is None:
            continue
        scale, shift = batch_norm_scale_shift(gamma, beta, mean, var, bn.args[6])
        rescale_output_channels(gm, layer, scale, shift)
        for u in users:
            u.replace_all_uses_with(bn.args[0])
            graph.erase_node(u)
        graph.erase_node(bn)
    return gm


def batch_norm_scale_shift(gamma, beta, mean: torch.Tensor, var: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift), in float64, with inference BatchNorm(x) = scale * x + shift (gamma, beta may be None)."""
    scale = torch.rsqrt(var.double() + eps)
    if gamma is not None:
        scale = scale * gamma.double()
    shift = -mean.double() * scale
    if beta is not None:
        shift = shift + beta.double()
    return scale, shift


def _foldable_producer(bn: Node) -> Node | None:
    """The conv or linear whose output channels the norm normalises, or None."""
    x = bn.args[0]
    if not isinstance(x, Node) or x.op != "call_function" or len(x.users) != 1:
        return None
    if x.target is aten.convolution.default:
        return None if x.args[6] else x  # transposed convs keep their norm
    # A linear's features are its output's last dim; the norm's channels are its input's dim 1.
    channels = shape_of(x)
    if channels is None or len(channels) != 2:
        return None
    node = x
    while node.target in _VIEWS:
        source = node.args[0]
        if not isinstance(source, Node) or source.op != "call_function" or len(source.users) != 1:
            return None
        shape = shape_of(source)
        if shape is None or shape[-1] != channels[-1]:
            return None
        node = source
    weight = shape_of(node.args[1]) if node.target is aten.linear.default else None
    return node if weight is not None and weight[0] == channels[-1] else None
