"""PT2E quantize/dequantize pairs → aten fake-quantize ops, so QAT and PT2E graphs take one path.

`convert_pt2e` (torchao) leaves `quantized_decomposed.quantize_per_tensor` → `dequantize_per_tensor`
pairs on activations and `dequantize_per_channel` on int8 weight constants. A pair computes
exactly what `fake_quantize_per_tensor_affine` with the same scale, zero point and range
computes, and a dequantized int8 weight re-quantizes to the same integers under a per-channel
fake-quantize with its scales. Rewritten this way, the engine needs converters for the aten
fake-quantize ops only, and the quantization placement pass reads the model's own scales from
them. A quantize or dequantize that is not part of such a pattern is left alone (it runs in
PyTorch, through the library that registered it).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from kiln.lowering.constants import add_constant, constant_of

aten = torch.ops.aten
FAKE_QUANTIZE_OPS = frozenset(
    {
        "fake_quantize_per_tensor_affine",
        "fake_quantize_per_tensor_affine_cachemask",
        "fake_quantize_per_channel_affine",
        "fake_quantize_per_channel_affine_cachemask",
        "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams",
    }
)


def is_quantization_op(target) -> bool:
    """Ops whose scales the engine needs to see: constant folding must leave them in the graph."""
    if not isinstance(target, torch._ops.OpOverload):
        return False
    return target.namespace == "quantized_decomposed" or target._opname in FAKE_QUANTIZE_OPS


def _is(node, name: str) -> bool:
    target = node.target if isinstance(node, Node) else None
    return isinstance(target, torch._ops.OpOverload) and target.namespace == "quantized_decomposed" and target._opname == name


def _number(gm: GraphModule, value):
    const = constant_of(gm, value)
    return const.reshape(-1)[0].item() if const is not None else value


def _qparams(gm: GraphModule, node: Node) -> tuple:
    """(scale, zero_point, qmin, qmax, dtype) of a per-tensor quantize/dequantize, scale and zero point as numbers."""
    _, scale, zero_point, qmin, qmax, dtype = node.args[:6]
    return float(_number(gm, scale)), int(_number(gm, zero_point)), int(qmin), int(qmax), dtype


def rewrite_quantize_dequantize(gm: GraphModule) -> GraphModule:
    graph = gm.graph
    for node in list(graph.nodes):
        if _is(node, "dequantize_per_tensor"):
            _per_tensor(gm, node)
        elif _is(node, "dequantize_per_channel"):
            _per_channel(gm, node)
    graph.eliminate_dead_code()
    return gm


def _replace(gm: GraphModule, node: Node, target, args: tuple) -> None:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(target, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _per_tensor(gm: GraphModule, dq: Node) -> None:
    src = dq.args[0]
    scale, zero_point, qmin, qmax, dtype = _qparams(gm, dq)
    if isinstance(src, Node) and _is(src, "quantize_per_tensor") and _qparams(gm, src) == (scale, zero_point, qmin, qmax, dtype):
        _replace(gm, dq, aten.fake_quantize_per_tensor_affine.default, (src.args[0], scale, zero_point, qmin, qmax))
        return
    weight = constant_of(gm, src)
    if weight is not None:
        value = (weight.float() - zero_point) * scale
        const = add_constant(gm, value, dq, dq.name + "_weight")
        _replace(gm, dq, aten.fake_quantize_per_tensor_affine.default, (const, scale, zero_point, qmin, qmax))


def _per_channel(gm: GraphModule, dq: Node) -> None:
    src, scale, zero_point, axis, qmin, qmax = dq.args[:6]
    weight, scales, zero_points = (constant_of(gm, a) for a in (src, scale, zero_point))
    if weight is None or scales is None or zero_points is None:
        return
    shape = [1] * weight.dim()
    shape[axis] = -1
    value = (weight.float() - zero_points.view(shape).float()) * scales.view(shape).float()
    w_node = add_constant(gm, value, dq, dq.name + "_weight")
    s_node = add_constant(gm, scales.float().contiguous(), dq, dq.name + "_scale")
    z_node = add_constant(gm, zero_points.to(torch.int32).contiguous(), dq, dq.name + "_zero_point")
    _replace(gm, dq, aten.fake_quantize_per_channel_affine.default, (w_node, s_node, z_node, int(axis), int(qmin), int(qmax)))
