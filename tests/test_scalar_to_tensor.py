"""`.item()` feeding arithmetic: the 0-d tensor is used directly, so the op runs on the engine."""

import torch

import kiln
from tests.helpers import Lambda, assert_outputs_match, check_against_eager

aten = torch.ops.aten


def test_item_times_a_tensor_runs_on_the_engine():
    model = Lambda(lambda x: x * aten._local_scalar_dense.default(x.amax()) + 1)
    check_against_eager(model, torch.randn(3, 4))


def test_item_in_a_comparison_runs_on_the_engine():
    model = Lambda(lambda x: (x > aten._local_scalar_dense.default(x.mean())).int())
    check_against_eager(model, torch.randn(3, 4))


def test_item_whose_dtype_would_change_the_result_stays_a_number():
    # A float64 0-d beside an int tensor would make float64; the Python number makes float32.
    model = Lambda(lambda i: i * aten._local_scalar_dense.default(i.double().mean())).eval()
    i = torch.arange(6).view(2, 3)
    compiled = kiln.compile(model, [i], min_block_size=1, truncate_double=False)
    assert_outputs_match(compiled(i), model(i))
