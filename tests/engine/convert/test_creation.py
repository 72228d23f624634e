import pytest
import torch

from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda, check_against_eager

X = torch.randn(4, 6, 8)

# name → (fn, a layer kind it must produce, or None when it becomes a constant). Creation ops with
# static sizes fold into constants at lowering (lowering/fold_constants.py); the converters still
# run for sizes known only at call time (tests/dynamic), and for *_like ops of an input.
CREATION = {
    "full": (lambda x: x + torch.full((6, 8), 3.0), None),
    "full_int": (lambda x: torch.full((2, 3), 7, dtype=torch.int32) + x.shape[0], None),
    "full_bool": (lambda x: x.masked_fill(torch.full((8,), True), 1.0), None),
    "full_neg_inf": (lambda x: torch.maximum(x, torch.full((4, 6, 8), float("-inf"))), None),
    "full_0d": (lambda x: torch.where(x > 0, x, torch.zeros(())), None),
    "zeros": (lambda x: x + torch.zeros(8), None),
    "ones_int": (lambda x: x * torch.ones(6, 8, dtype=torch.int32), None),
    "new_zeros": (lambda x: torch.cat([x, x.new_zeros(4, 1, 8)], 1), None),
    "new_full": (lambda x: x.new_full((3,), 2) * 2, None),
    "full_like": (lambda x: torch.full_like(x, 3.0) * x, "expand"),
    "zeros_like": (lambda x: torch.zeros_like(x) + x, "expand"),
    "ones_like_dtype": (lambda x: torch.ones_like(x, dtype=torch.int64), "expand"),
    "ones_like_bool": (lambda x: torch.ones_like(x, dtype=torch.bool) & (x > 0), "expand"),
    "empty_like_filled": (lambda x: torch.empty_like(x).fill_(1.5), None),
    "scalar_tensor": (lambda x: torch.where(x > 0, x, -1.0), "where"),
    "arange": (lambda x: x + torch.arange(8), None),
    "arange_start_step": (lambda x: x + torch.arange(1, 17, 2, dtype=torch.float32), None),
    "arange_float_step": (lambda x: torch.arange(0.0, 1.0, 0.25) * x[0, 0, :4], None),
    "arange_negative_step": (lambda x: torch.arange(10, 2, -2) * 2, None),
    "tril_mask": (lambda x: torch.tril(x), "where"),
}


@pytest.mark.parametrize("name", sorted(CREATION))
def test_creation_matches_eager(name):
    fn, kind = CREATION[name]
    compiled = check_against_eager(Lambda(fn), X)
    if kind is not None:
        assert kind in layer_kinds(compiled)
