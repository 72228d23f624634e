import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Lambda, check_against_eager

ACTIVATIONS = {
    "relu": torch.relu,
    "relu6": F.relu6,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "elu": lambda x: F.elu(x, 0.7),
    "softplus": lambda x: F.softplus(x, beta=2.0, threshold=5.0),
    "clamp": lambda x: torch.clamp(x, -0.5, 0.75),
    "clamp_min": lambda x: torch.clamp(x, min=0.1),
    "hardtanh": F.hardtanh,
    "sqrt": lambda x: torch.sqrt(x.abs() + 0.1),
    "rsqrt": lambda x: torch.rsqrt(x.abs() + 0.1),
    "exp": torch.exp,
    "log": lambda x: torch.log(x.abs() + 0.1),
    "neg": torch.neg,
    "abs": torch.abs,
    "reciprocal": lambda x: torch.reciprocal(x.abs() + 0.1),
    "erf": torch.erf,
    "sin": torch.sin,
    "cos": torch.cos,
    "sign": torch.sign,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,
    "trunc": torch.trunc,
    "isnan": lambda x: torch.isnan(torch.log(x)),
    "isinf": lambda x: torch.isinf(1 / x.round()),
    "log1p": lambda x: torch.log1p(x.abs()),
    "log2": lambda x: torch.log2(x.abs() + 0.1),
    "expm1": torch.expm1,
    "tan": lambda x: torch.tan(x / 4),
    "atan": torch.atan,
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_eager(name):
    x = torch.randn(2, 3, 5, 7) * 3
    compiled = check_against_eager(Lambda(ACTIVATIONS[name]), x)
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "unary" in kinds
