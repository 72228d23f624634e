import pytest
import torch
import torch.nn.functional as F

import kiln
from tests.helpers import Lambda, check_against_eager

POOLS = {
    "max": lambda x: F.max_pool2d(x, 2),
    "max_stride_padding": lambda x: F.max_pool2d(x, 3, 2, 1),
    "max_ceil_mode": lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True),
    "max_ceil_mode_padding": lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
    "max_dilation": lambda x: F.max_pool2d(x, 2, 1, 1, dilation=2),
    "max_rect_kernel": lambda x: F.max_pool2d(x, (2, 3), (1, 2)),
    "max_1d": lambda x: F.max_pool1d(x.flatten(2), 3, 2, 1),
    "max_indices_unused": lambda x: F.max_pool2d(x, 2, return_indices=True)[0],
    "avg": lambda x: F.avg_pool2d(x, 2),
    "avg_padding_count_include_pad": lambda x: F.avg_pool2d(x, 3, 2, 1),
    "avg_padding_exclude_pad": lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
    "avg_ceil_mode": lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
    "avg_ceil_mode_exclude_pad": lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    "avg_divisor_override": lambda x: F.avg_pool2d(x, 3, 2, divisor_override=4),
    "avg_1d": lambda x: F.avg_pool1d(x.flatten(2), 4),
    "adaptive_avg_global": lambda x: F.adaptive_avg_pool2d(x, 1),
    "adaptive_avg_divisible": lambda x: F.adaptive_avg_pool2d(x, (5, 4)),
    "adaptive_avg_uneven": lambda x: F.adaptive_avg_pool2d(x, (3, 7)),
    "adaptive_avg_larger_than_input": lambda x: F.adaptive_avg_pool2d(x, (12, 9)),
    "adaptive_avg_none_dim": lambda x: F.adaptive_avg_pool2d(x, (None, 3)),
    "adaptive_avg_1d": lambda x: F.adaptive_avg_pool1d(x.flatten(2), 7),
    "adaptive_max": lambda x: F.adaptive_max_pool2d(x, (3, 5)),
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_matches_eager(name):
    compiled = check_against_eager(Lambda(POOLS[name]), torch.randn(2, 3, 10, 8))
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "pool" in kinds


def test_pool_unbatched_input():
    check_against_eager(Lambda(lambda x: F.max_pool2d(x, 3, 2, 1) + F.avg_pool2d(x, 3, 2, 1)), torch.randn(3, 10, 8))


def test_max_pool_indices_used_falls_back_with_reason():
    model = Lambda(lambda x: F.max_pool2d(x, 2, return_indices=True))
    x = torch.randn(2, 3, 10, 8)
    compiled = kiln.compile(model, [x], min_block_size=1)
    row = next(r for r in compiled.report.rows if r.op == "aten.max_pool2d_with_indices.default")
    assert row.where == "pytorch"
    assert "indices" in row.reason
    out, ref = compiled(x), model(x)
    torch.testing.assert_close(out[0], ref[0])
    assert torch.equal(out[1], ref[1])
