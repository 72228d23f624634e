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
}


@reference("unary")
def unary_reference(layer, inputs, run):
    return UNARY_OPS[layer.attrs["op"]](inputs[0], layer.attrs)


@reference("copy")
def copy_reference(layer, inputs, run):
    return inputs[0].clone()
