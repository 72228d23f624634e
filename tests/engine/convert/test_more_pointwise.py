"""Pointwise ops added for Torch-TensorRT parity: inverse and hyperbolic trig, log10, atan2,
bitwise ops with a scalar first, and cat beside a 1-D empty tensor."""

import pytest
import torch

from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda, check_against_eager

aten = torch.ops.aten

# Inputs inside each op's domain, so NaN never hides a wrong formula.
UNARY = {
    "log10": (torch.log10, lambda: torch.rand(4, 5) + 0.1),
    "asin": (torch.asin, lambda: torch.rand(4, 5) * 1.8 - 0.9),
    "acos": (torch.acos, lambda: torch.rand(4, 5) * 1.8 - 0.9),
    "asinh": (torch.asinh, lambda: torch.randn(4, 5) * 3),
    "acosh": (torch.acosh, lambda: torch.rand(4, 5) * 5 + 1),
    "atanh": (torch.atanh, lambda: torch.rand(4, 5) * 1.8 - 0.9),
    "sinh": (torch.sinh, lambda: torch.randn(4, 5)),
    "cosh": (torch.cosh, lambda: torch.randn(4, 5)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_matches_eager(name):
    fn, make = UNARY[name]
    compiled = check_against_eager(Lambda(fn), make())
    assert "unary" in layer_kinds(compiled)


def test_atan2_matches_eager_in_every_quadrant():
    y, x = torch.randn(6, 7), torch.randn(6, 7)
    compiled = check_against_eager(Lambda(torch.atan2), y, x)
    assert "binary" in layer_kinds(compiled)


@pytest.mark.parametrize("op", [aten.bitwise_and.Scalar_Tensor, aten.bitwise_or.Scalar_Tensor, aten.bitwise_xor.Scalar_Tensor])
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_bitwise_with_a_scalar_first(op, dtype):
    x = torch.randint(0, 16, (3, 5)).to(dtype)
    scalar = True if dtype == torch.bool else 6
    check_against_eager(Lambda(lambda x: op(scalar, x)), x)


def test_clamp_with_tensor_bounds():
    x, lo, hi = torch.randn(4, 5), torch.randn(5) - 0.5, torch.randn(4, 1) + 0.5
    check_against_eager(Lambda(lambda x, lo, hi: torch.clamp(x, lo, hi)), x, lo, hi)


def test_clamp_int_bounds_keep_an_int_tensor_int():
    check_against_eager(Lambda(lambda i: torch.clamp(i, 0, 3) * 2), torch.arange(-3, 7))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_cat_skips_a_1d_empty_tensor_beside_tensors_of_another_rank(where):
    def fn(a, b):
        empty = a.new_zeros(0)
        parts = {"first": [empty, a, b], "middle": [a, empty, b], "last": [a, b, empty]}[where]
        return torch.cat(parts, dim=2)

    check_against_eager(Lambda(fn), torch.randn(2, 3, 4), torch.randn(2, 3, 5))


def test_cat_of_one_tensor_and_an_empty_one_is_a_copy():
    check_against_eager(Lambda(lambda a: torch.cat([a.new_zeros(0), a * 2], dim=1)), torch.randn(2, 3))
