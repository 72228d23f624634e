"""QAT fake-quantize ops → `fake_quantize` layers (PT2E quantize/dequantize pairs become these in lowering).

A fake-quantize op carries the model's own scale and zero point. Left alone it runs as float
arithmetic with the rounding of 8 bits (kernels/quantized.py); with INT8 enabled, the
quantization placement pass (optimize/quantize_placement.py) reads those scales and turns the
conv/linear/matmul it feeds into an INT8 layer.
"""

import torch

from kiln.engine.convert.registry import converter

aten = torch.ops.aten


def _qparams_are_constants(node):
    scale, zero_point = node.args[1], node.args[2]
    for value in (scale, zero_point):
        if isinstance(value, torch.fx.Node) and value.op != "get_attr":
            return "fake-quantize whose scale or zero point is computed at run time"
    return None


def _constant_number(ctx, value):
    const = ctx.constant_value(value)
    if const is not None:
        return const.reshape(-1)[0].item()
    return value


def _per_tensor(ctx, node, outputs=None):
    x, scale, zero_point, qmin, qmax = node.args[:5]
    attrs = {
        "axis": None,
        "scale": float(_constant_number(ctx, scale)),
        "zero_point": int(_constant_number(ctx, zero_point)),
        "qmin": int(qmin),
        "qmax": int(qmax),
    }
    return ctx.add("fake_quantize", [ctx.tensor(x)], attrs, outputs=outputs)


def _per_channel(ctx, node, outputs=None):
    x, scale, zero_point, axis, qmin, qmax = node.args[:6]
    attrs = {"axis": int(axis), "qmin": int(qmin), "qmax": int(qmax)}
    return ctx.add("fake_quantize", [ctx.tensor(x), ctx.tensor(scale), ctx.tensor(zero_point)], attrs, outputs=outputs)


@converter(
    aten.fake_quantize_per_tensor_affine.default, aten.fake_quantize_per_tensor_affine.tensor_qparams, supports=_qparams_are_constants
)
def convert_fake_quantize_per_tensor(ctx, node):
    return _per_tensor(ctx, node)


@converter(aten.fake_quantize_per_tensor_affine_cachemask.default)
def convert_fake_quantize_per_tensor_cachemask(ctx, node):
    # The mask (output 1) is for the backward pass; inference graphs never read it.
    return _per_tensor(ctx, node, outputs=[ctx.output_specs()[0], None])


@converter(aten.fake_quantize_per_channel_affine.default, supports=_qparams_are_constants)
def convert_fake_quantize_per_channel(ctx, node):
    return _per_channel(ctx, node)


@converter(aten.fake_quantize_per_channel_affine_cachemask.default, supports=_qparams_are_constants)
def convert_fake_quantize_per_channel_cachemask(ctx, node):
    return _per_channel(ctx, node, outputs=[ctx.output_specs()[0], None])
