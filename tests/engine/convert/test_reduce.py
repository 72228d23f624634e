import pytest
import torch

from tests.helpers import Lambda, check_against_eager

REDUCTIONS = {
    "sum_dim": lambda x: x.sum(1),
    "sum_dims_keepdim": lambda x: x.sum((1, 3), keepdim=True),
    "sum_all": lambda x: x.sum(),
    "sum_negative_dim": lambda x: x.sum(-1),
    "sum_dtype_half": lambda x: x.sum(2, dtype=torch.float16),
    "sum_int_to_float": lambda x: (x > 0).int().sum(1, dtype=torch.float32),
    "sum_bool": lambda x: (x > 0).sum(1),
    "mean_spatial_keepdim": lambda x: x.mean((2, 3), keepdim=True),
    "mean_all": lambda x: x.mean(),
    "mean_all_keepdim": lambda x: x.mean(dim=None, keepdim=True),
    "amax": lambda x: x.amax(-1),
    "amax_dims_keepdim": lambda x: x.amax((0, 2), keepdim=True),
    "amin_all": lambda x: x.amin(),
    "max_all": lambda x: x.max(),
    "min_all": lambda x: x.min(),
    "max_dim_values": lambda x: x.max(1).values,
    "max_dim_both": lambda x: tuple(x.max(2, keepdim=True)),
    "min_dim_indices": lambda x: x.min(-1).indices,
    "argmax": lambda x: x.argmax(1),
    "argmin_keepdim": lambda x: x.argmin(-1, keepdim=True),
    "argmax_flat": lambda x: x.argmax(),
    "prod_dim": lambda x: (x * 0.5 + 1).prod(1),
    "prod_all": lambda x: (x * 0.1 + 1).prod(),
    "any_dim": lambda x: (x > 1).any(1),
    "any_dims": lambda x: (x > 1).any((1, 2)),
    "all": lambda x: (x > -3).all(),
    "var_unbiased_keepdim": lambda x: x.var(1, keepdim=True),
    "var_biased": lambda x: x.var((2, 3), unbiased=False),
    "var_all": lambda x: x.var(),
    "std": lambda x: x.std(-1),
    "norm": lambda x: x.norm(dim=1),
    "norm_l1": lambda x: torch.linalg.vector_norm(x, 1, (1, 2)),
    "norm_inf": lambda x: torch.linalg.vector_norm(x, float("inf"), -1, keepdim=True),
    "logsumexp": lambda x: torch.logsumexp(x, 1),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_matches_eager(name):
    compiled = check_against_eager(Lambda(REDUCTIONS[name]), torch.randn(2, 5, 6, 7))
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "reduce" in kinds
