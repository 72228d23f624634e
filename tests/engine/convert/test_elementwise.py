import pytest
import torch

from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda, check_against_eager

A = torch.randn(3, 4, 5)
B = torch.randn(4, 5)  # broadcasts against A
ROW = torch.randn(3, 1, 5)

# name → fn(a, b); b broadcasts against a.
BINARY = {
    "add": lambda a, b: a + b,
    "add_alpha": lambda a, b: torch.add(a, b, alpha=2.5),
    "add_scalar": lambda a, b: a + 3,
    "add_scalar_alpha": lambda a, b: torch.add(a, 3, alpha=2),
    "sub": lambda a, b: a - b,
    "sub_alpha": lambda a, b: torch.sub(a, b, alpha=-3),
    "sub_scalar": lambda a, b: a - 0.5,
    "rsub_scalar": lambda a, b: 1 - a,
    "rsub_alpha": lambda a, b: torch.rsub(a, 2, alpha=3),
    "rsub_tensor": lambda a, b: torch.rsub(a, b, alpha=2),
    "mul": lambda a, b: a * b,
    "mul_scalar": lambda a, b: a * -1.5,
    "scalar_mul": lambda a, b: 2 * a,
    "div": lambda a, b: a / (b.abs() + 0.5),
    "div_scalar": lambda a, b: a / 3,
    "scalar_div": lambda a, b: 2 / (a.abs() + 0.5),
    "floor_div_scalar": lambda a, b: a // 0.3,
    "div_trunc": lambda a, b: torch.div(a, b.abs() + 0.5, rounding_mode="trunc"),
    "div_floor": lambda a, b: torch.div(a, b.abs() + 0.5, rounding_mode="floor"),
    "fmod": lambda a, b: torch.fmod(a, 0.7),
    "remainder": lambda a, b: a % (b.abs() + 0.5),
    "pow_scalar": lambda a, b: a**2,
    "pow_fraction": lambda a, b: a.abs() ** 0.5,
    "pow_negative": lambda a, b: (a.abs() + 1) ** -1.5,
    "pow_tensor": lambda a, b: (a.abs() + 0.1) ** b,
    "scalar_pow": lambda a, b: 2**a,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "max_broadcast_row": lambda a, b: torch.maximum(a, b[:1].unsqueeze(0)),
    "clamp_tensor": lambda a, b: torch.clamp(a, -b.abs(), b.abs()),
    "clamp_tensor_min": lambda a, b: torch.clamp(a, min=b),
    "clamp_tensor_max": lambda a, b: torch.clamp(a, max=b),
    "clamp_crossed_bounds": lambda a, b: torch.clamp(a, b.abs(), -b.abs()),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("rhs", [B, ROW], ids=["trailing", "row"])
def test_binary_matches_eager(name, rhs):
    compiled = check_against_eager(Lambda(BINARY[name]), A, rhs)
    assert "binary" in layer_kinds(compiled)


COMPARISONS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq_scalar": lambda a, b: a == 1,
    "lt_scalar": lambda a, b: a < 0.5,
    "ge_scalar": lambda a, b: a >= -1,
    "logical_and": lambda a, b: torch.logical_and(a > 0, b > 0),
    "logical_or": lambda a, b: torch.logical_or(a > 0, b > 0),
    "logical_xor": lambda a, b: torch.logical_xor(a > 0, b > 0),
    "logical_not": lambda a, b: torch.logical_not(a > b),
    "and_operator": lambda a, b: (a > 0) & (b < 1),
    "or_operator": lambda a, b: (a > 0) | (b < 1),
    "xor_operator": lambda a, b: (a > 0) ^ (b < 1),
    "invert_bool": lambda a, b: ~(a > b),
    "logical_on_float": lambda a, b: torch.logical_and(a, b),
}


@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_comparison_and_logic_match_eager(name):
    a = torch.randint(-2, 3, (3, 4, 5)).float()
    b = torch.randint(-2, 3, (4, 5)).float()
    check_against_eager(Lambda(COMPARISONS[name]), a, b)


INTEGER = {
    "add": lambda a, b: a + b,
    "sub_alpha": lambda a, b: torch.sub(a, b, alpha=2),
    "mul_scalar": lambda a, b: a * 3,
    "true_div": lambda a, b: a / 4,
    "floor_div": lambda a, b: a // (b.abs() + 1),
    "trunc_div": lambda a, b: torch.div(a, b.abs() + 1, rounding_mode="trunc"),
    "remainder": lambda a, b: a % 3,
    "pow": lambda a, b: a**2,
    "maximum": torch.maximum,
    "bitwise_and": lambda a, b: a & b,
    "bitwise_or": lambda a, b: a | 6,
    "bitwise_xor": lambda a, b: a ^ b,
    "bitwise_not": lambda a, b: ~a,
    "int_plus_float_scalar": lambda a, b: a + 0.5,
    "int_times_float_tensor": lambda a, b: a * b.float(),
}


@pytest.mark.parametrize("name", sorted(INTEGER))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_integer_binary_is_exact(name, dtype):
    a = torch.randint(-20, 20, (3, 4, 5), dtype=dtype)
    b = torch.randint(-20, 20, (4, 5), dtype=dtype)
    check_against_eager(Lambda(INTEGER[name]), a, b)


def test_half_tensor_with_float_scalar_stays_half():
    a = torch.randn(3, 4).half()
    check_against_eager(Lambda(lambda a: (1 - a) * 0.5 + 2**a), a, rtol=1e-3)


WHERE = {
    "tensors": lambda a, b: torch.where(a > b, a, b),
    "scalar_other": lambda a, b: torch.where(a > 0, a, 0.0),
    "scalar_self": lambda a, b: torch.where(a > 0, -1.0, b),
    "both_scalars": lambda a, b: torch.where(a > b, 1.0, 2.0),
    "tensor_scalar_branch": lambda a, b: torch.where(a > 0, a, torch.tensor(0.5)),
    "masked_fill": lambda a, b: a.masked_fill(b > 0, -1e9),
    "int_branches": lambda a, b: torch.where(a > 0, 1, 0),
    "broadcast_mask": lambda a, b: torch.where(b > 0, a, b),
    "triu_mask": lambda a, b: a.masked_fill(torch.ones(4, 5, dtype=torch.bool).triu(), 0.0),
}


@pytest.mark.parametrize("name", sorted(WHERE))
def test_where_matches_eager(name):
    compiled = check_against_eager(Lambda(WHERE[name]), A, B)
    assert "where" in layer_kinds(compiled)
