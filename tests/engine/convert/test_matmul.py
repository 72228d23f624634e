import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Lambda, check_against_eager

# name: (function of (x, *weights), input shape, weight shapes)
MATMULS = {
    "linear": (lambda x, w, b: F.linear(x, w, b), (3, 7, 16), [(5, 16), (5,)]),
    "linear_no_bias": (lambda x, w: F.linear(x, w), (4, 16), [(9, 16)]),
    "linear_1d_input": (lambda x, w, b: F.linear(x, w, b), (16,), [(5, 16), (5,)]),
    "addmm": (lambda x, w, b: torch.addmm(b, x, w), (4, 16), [(16, 5), (5,)]),
    "addmm_alpha_beta": (lambda x, w, b: torch.addmm(b, x, w, beta=0.5, alpha=2.0), (4, 16), [(16, 5), (4, 5)]),
    "addmm_beta_zero": (lambda x, w, b: torch.addmm(b, x, w, beta=0), (4, 16), [(16, 5), (5,)]),
    "mm": (lambda x, w: torch.mm(x, w), (4, 16), [(16, 5)]),
    "mm_activations": (lambda x: torch.mm(x, x.t()), (4, 16), []),
    "bmm": (lambda x, w: torch.bmm(x, w), (3, 4, 16), [(3, 16, 5)]),
    "matmul_3d_2d": (lambda x, w: x @ w, (3, 4, 16), [(16, 5)]),
    "matmul_4d_4d": (lambda x: x @ x.transpose(-1, -2), (2, 3, 4, 16), []),
    "matmul_broadcast_batch": (lambda x, w: x @ w, (2, 3, 4, 16), [(1, 3, 16, 5)]),
    "matmul_broadcast_lhs": (lambda x, w: w @ x, (2, 3, 16, 4), [(5, 16)]),
    "matmul_vector": (lambda x, w: x @ w, (3, 4, 16), [(16,)]),
    "matmul_vector_lhs": (lambda x, w: w @ x, (16, 5), [(16,)]),
    "baddbmm": (lambda x, w, b: torch.baddbmm(b, x, w, beta=0.5, alpha=3.0), (3, 4, 16), [(3, 16, 5), (3, 4, 5)]),
}


@pytest.mark.parametrize("name", sorted(MATMULS))
def test_matmul_matches_eager(name):
    fn, x_shape, w_shapes = MATMULS[name]
    compiled = check_against_eager(Lambda(fn, *(torch.randn(s) for s in w_shapes)), torch.randn(x_shape))
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    # A matrix @ vector product reaches the engine as mul + sum (core-ATen decomposition).
    assert kinds & {"linear", "matmul", "reduce"}


def test_addmm_nan_bias_with_beta_zero_is_ignored():
    bias = torch.full((5,), float("nan"))
    check_against_eager(Lambda(lambda x, w, b: torch.addmm(b, x, w, beta=0), torch.randn(16, 5), bias), torch.randn(4, 16))
