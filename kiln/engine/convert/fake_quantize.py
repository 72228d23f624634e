"""QAT fake-quantize ops → `fake_quantize` layers (PT2E quantize/dequantize pairs become these in lowering).

A fake-quantize op carries the model's own scale and zero point. Left alone it runs as float
arithmetic with the rounding of 8 bits (kernels/quantized.py); with INT8 enabled, the
quantization placement pass (optimize/quantize_placement.py) reads those scales and turns the
conv/linear/matmul it feeds into an INT8 layer.
"""

import torch

from kiln.engine.convert.registry import converter

aten = torch.ops.aten


# Creation ops with literal arguments (torch.zeros(n, dtype=torch.int32) for the zero points) are
# not folded by lowering (they have no inputs), but their values are known at compile time.
CREATION_OPS = frozenset({aten.full.default, aten.zeros.default, aten.ones.default, aten.scalar_tensor.default})


def _is_static(value) -> bool:
    if not isinstance(value, torch.fx.Node):
        return True
    return value.op == "get_attr" or (value.target in CREATION_OPS and not value.all_input_nodes)


def _qparams_are_constants(node):
    if not all(_is_static(v) for v in node.args[1:3]):
        return "fake-quantize whose scale or zero point is computed at run time"
    return None


def _static_tensor(ctx, value):
    """A scale or zero point as a constant tensor (a weight, or a creation op evaluated now), or a Python number."""
    if not isinstance(value, torch.fx.Node):
        return value
    const = ctx.constant_value(value)
    if const is None:
        kwargs = {**value.kwargs, "device": "cpu"}
        const = value.target(*value.args, **kwargs)
    return const


def _constant_number(ctx, value):
    const = _static_tensor(ctx, value)
    return const.reshape(-1)[0].item() if isinstance(const, torch.Tensor) else value


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
    scale, zero_point = (ctx.constant(_static_tensor(ctx, v), "qparam") for v in (scale, zero_point))
    return ctx.add("fake_quantize", [ctx.tensor(x), scale, zero_point], attrs, outputs=outputs)


@converter(
    aten.fake_quantize_per_tensor_affine.default, aten.fake_quantize_per_tensor_affine.tensor_qparams, supports=_qparams_are_constants
)
def convert_fake_quantize_per_tensor(ctx, node):
    return _per_tensor(ctx, node)


@converter(aten.fake_quantize_per_tensor_affine_cachemask.default, supports=_qparams_are_constants)
def convert_fake_quantize_per_tensor_cachemask(ctx, node):
    # The mask (output 1) is for the backward pass; inference graphs never read it.
    return _per_tensor(ctx, node, outputs=[ctx.output_specs()[0], None])


@converter(aten.fake_quantize_per_channel_affine.default, supports=_qparams_are_constants)
def convert_fake_quantize_per_channel(ctx, node):
    return _per_channel(ctx, node)


@converter(aten.fake_quantize_per_channel_affine_cachemask.default, supports=_qparams_are_constants)
def convert_fake_quantize_per_channel_cachemask(ctx, node):
    return _per_channel(ctx, node, outputs=[ctx.output_specs()[0], None])
