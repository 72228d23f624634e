"""Random ops run on the engine with a fresh draw per call; their values differ from eager's, so
the tests check shape, dtype, range and that two calls differ."""

import pytest
import torch

import kiln
from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda

aten = torch.ops.aten

CASES = {
    "rand": (lambda x: torch.rand(3, 4) + x * 0, torch.float32, (0.0, 1.0)),
    "randn": (lambda x: torch.randn(3, 4) + x * 0, torch.float32, None),
    "rand_like": (lambda x: torch.rand_like(x) * 2, torch.float32, (0.0, 2.0)),
    "randn_like_half": (lambda x: torch.randn_like(x, dtype=torch.float16), torch.float16, None),
    "randint": (lambda x: torch.randint(7, (3, 4)) + x.long() * 0, torch.int64, (0, 6)),
    "randint_low": (lambda x: torch.randint(-3, 5, (3, 4), dtype=torch.int32) + x.int() * 0, torch.int32, (-3, 4)),
    "randint_like": (lambda x: torch.randint_like(x, 2, 9), torch.float32, (2, 8)),
    "randperm": (lambda x: torch.randperm(12) + x.long().flatten() * 0, torch.int64, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_op_runs_on_the_engine_with_a_fresh_draw_per_call(name):
    fn, dtype, bounds = CASES[name]
    model = Lambda(fn).eval()
    x = torch.zeros(3, 4)
    compiled = kiln.compile(model, [x], min_block_size=1, require_full_compilation=True)
    assert "random" in layer_kinds(compiled)
    first, second = compiled(x), compiled(x)
    ref = model(x)
    assert first.shape == ref.shape and first.dtype == ref.dtype == dtype
    assert not torch.equal(first, second), "two calls drew the same values"
    if bounds is not None:
        assert first.min() >= bounds[0] and first.max() <= bounds[1]
    if name == "randperm":
        assert torch.equal(first.sort().values, torch.arange(12))
    if name == "randn":
        assert first.abs().max() < 10


def test_random_shape_follows_a_dynamic_dim():
    model = Lambda(lambda x: torch.rand(x.shape[0], 2) + x[:, :1]).eval()
    spec = kiln.Input(min_shape=(2, 3), opt_shape=(4, 3), max_shape=(8, 3))
    compiled = kiln.compile(model, [spec], min_block_size=1, require_full_compilation=True)
    for batch in (2, 5, 8):
        out = compiled(torch.zeros(batch, 3))
        assert out.shape == (batch, 2) and 0 <= out.min() and out.max() <= 1
