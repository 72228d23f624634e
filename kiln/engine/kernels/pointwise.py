"""`unary` (one input, op by name) and `copy`; the two-input pointwise layers are in elementwise.py."""

import torch
import torch.nn.functional as F

from kiln.engine.kernels.registry import reference

UNARY_OPS = {
    "relu": lambda x, a: torch.relu(x),
    "relu6": lambda x, a: F.relu6(x),
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "tanh": lambda x, a: torch.tanh(x),
    "silu": lambda x, a: F.silu(x),
    "hardswish": lambda x, a: F.hardswish(x),
    "hardsigmoid": lambda x, a: F.hardsigmoid(x),
    "gelu": lambda x, a: F.gelu(x),
    "gelu_tanh": lambda x, a: F.gelu(x, approximate="tanh"),
    "leaky_relu": lambda x, a: F.leaky_relu(x, a["alpha"]),
    "elu": lambda x, a: torch.ops.aten.elu(x, a["alpha"], a["scale"], a["input_scale"]),
    "softplus": lambda x, a: F.softplus(x, a["beta"], a["threshold"]),
    "clamp": lambda x, a: torch.clamp(x, a["min"], a["max"]),
    "sqrt": lambda x, a: torch.sqrt(x),
    "rsqrt": lambda x, a: torch.rsqrt(x),
    "exp": lambda x, a: torch.exp(x),
    "log": lambda x, a: torch.log(x),
    "neg": lambda x, a: torch.neg(x),
    "abs": lambda x, a: torch.abs(x),
    "reciprocal": lambda x, a: torch.reciprocal(x),
    "erf": lambda x, a: torch.erf(x),
    "sin": lambda x, a: torch.sin(x),
    "cos": lambda x, a: torch.cos(x),
    "logical_not": lambda x, a: torch.logical_not(x),
    "bitwise_not": lambda x, a: torch.bitwise_not(x),
    "sign": lambda x, a: torch.sign(x),
    "floor": lambda x, a: torch.floor(x),
    "ceil": lambda x, a: torch.ceil(x),
    "round": lambda x, a: torch.round(x),
    "trunc": lambda x, a: torch.trunc(x),
    "isnan": lambda x, a: torch.isnan(x),
    "isinf": lambda x, a: torch.isinf(x),
    "log1p": lambda x, a: torch.log1p(x),
    "log2": lambda x, a: torch.log2(x),
    "expm1": lambda x, a: torch.expm1(x),
    "tan": lambda x, a: torch.tan(x),
    "atan": lambda x, a: torch.atan(x),
    "log10": lambda x, a: torch.log10(x),
    "asin": lambda x, a: torch.asin(x),
    "acos": lambda x, a: torch.acos(x),
    "asinh": lambda x, a: torch.asinh(x),
    "acosh": lambda x, a: torch.acosh(x),
    "atanh": lambda x, a: torch.atanh(x),
    "sinh": lambda x, a: torch.sinh(x),
    "cosh": lambda x, a: torch.cosh(x),
}


# The same ops as Triton expressions over FP32 values, for generated kernels (kernels/codegen):
# fn(x, attrs) -> expression text, x being the name of the operand. An op missing here is
# simply not fused into generated kernels (it runs as its own layer). `libdevice` is
# triton.language.extra.libdevice, imported by every generated module.
UNARY_TRITON = {
    "relu": lambda x, a: f"tl.maximum({x}, 0.0)",
    "relu6": lambda x, a: f"tl.minimum(tl.maximum({x}, 0.0), 6.0)",
    "sigmoid": lambda x, a: f"tl.sigmoid({x})",
    "tanh": lambda x, a: f"libdevice.tanh({x})",
    "silu": lambda x, a: f"{x} * tl.sigmoid({x})",
    "hardswish": lambda x, a: f"{x} * (tl.minimum(tl.maximum({x} + 3.0, 0.0), 6.0) / 6.0)",
    "hardsigmoid": lambda x, a: f"tl.minimum(tl.maximum({x} + 3.0, 0.0), 6.0) / 6.0",
    "gelu": lambda x, a: f"0.5 * {x} * (1.0 + libdevice.erf({x} * 0.7071067811865476))",
    "gelu_tanh": lambda x, a: f"0.5 * {x} * (1.0 + libdevice.tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))",
    "leaky_relu": lambda x, a: f"tl.where({x} > 0.0, {x}, {x} * {float(a['alpha'])!r})",
    "elu": lambda x, a: (
        f"{float(a['scale'])!r} * tl.where({x} > 0.0, {x}, {float(a['alpha'])!r} * (libdevice.expm1({x} * {float(a['input_scale'])!r})))"
    ),
    "softplus": lambda x, a: (
        f"tl.where({x} * {float(a['beta'])!r} > {float(a['threshold'])!r}, {x}, "
        f"libdevice.log1p(tl.exp({x} * {float(a['beta'])!r})) / {float(a['beta'])!r})"
    ),
    "clamp": lambda x, a: _clamp_text(x, a.get("min"), a.get("max")),
    "sqrt": lambda x, a: f"tl.sqrt_rn({x})",
    "rsqrt": lambda x, a: f"libdevice.rsqrt({x})",
    "exp": lambda x, a: f"tl.exp({x})",
    "log": lambda x, a: f"tl.log({x})",
    "neg": lambda x, a: f"-{x}",
    "abs": lambda x, a: f"tl.abs({x})",
    "reciprocal": lambda x, a: f"1.0 / {x}",
    "erf": lambda x, a: f"libdevice.erf({x})",
    "sin": lambda x, a: f"tl.sin({x})",
    "cos": lambda x, a: f"tl.cos({x})",
    "floor": lambda x, a: f"libdevice.floor({x})",
    "ceil": lambda x, a: f"libdevice.ceil({x})",
    "round": lambda x, a: f"libdevice.rint({x})",
    "trunc": lambda x, a: f"libdevice.trunc({x})",
    "log1p": lambda x, a: f"libdevice.log1p({x})",
    "log2": lambda x, a: f"tl.log2({x})",
    "expm1": lambda x, a: f"libdevice.expm1({x})",
    "tan": lambda x, a: f"libdevice.tan({x})",
    "atan": lambda x, a: f"libdevice.atan({x})",
    "log10": lambda x, a: f"libdevice.log10({x})",
    "asin": lambda x, a: f"libdevice.asin({x})",
    "acos": lambda x, a: f"libdevice.acos({x})",
    "asinh": lambda x, a: f"libdevice.asinh({x})",
    "acosh": lambda x, a: f"libdevice.acosh({x})",
    "atanh": lambda x, a: f"libdevice.atanh({x})",
    "sinh": lambda x, a: f"libdevice.sinh({x})",
    "cosh": lambda x, a: f"libdevice.cosh({x})",
}


def _clamp_text(x: str, lo, hi) -> str:
    text = x if lo is None else f"tl.maximum({x}, {float(lo)!r})"
    return text if hi is None else f"tl.minimum({text}, {float(hi)!r})"


@reference("unary")
def unary_reference(layer, inputs, run):
    return UNARY_OPS[layer.attrs["op"]](inputs[0], layer.attrs)


@reference("copy")
def copy_reference(layer, inputs, run):
    return inputs[0].clone()
