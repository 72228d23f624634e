"""The Triton GEMM with a generated epilogue against the linear reference (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_gemm
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.matmul import linear_reference
from kiln.engine.kernels.registry import RunContext
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_gemm.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


ALL_CONFIGS = {**triton_gemm.CONFIGS, **triton_gemm.TMA_CONFIGS}


@pytest.mark.parametrize("config", list(ALL_CONFIGS))
@pytest.mark.parametrize("rows,k,n", [(7, 24, 40), (70, 64, 130), (300, 72, 20)])
def test_gemm_with_gelu_layer_scale_and_residual(config, rows, k, n):
    torch.manual_seed(rows + k + n)
    x = torch.randn(rows, k, device=DEVICE).half()
    w = (torch.randn(n, k, device=DEVICE) / k**0.5).half()
    b = torch.randn(n, device=DEVICE).half()
    gamma = torch.rand(n, device=DEVICE).half()
    residual = torch.randn(rows, n, device=DEVICE).half()
    ops = (
        {"kind": "unary", "op": "gelu", "args": [0], "attrs": {"op": "gelu"}},
        {"kind": "binary", "op": "mul", "args": [3, 1], "attrs": {"op": "mul"}},
        {"kind": "binary", "op": "add", "args": [2, 4], "attrs": {"op": "add"}},
    )
    program = Program(3, ops, (5,))
    layer = Layer("linear", "l", [], [], {"epilogue": program.to_json()})
    out = triton_gemm.gemm(x, w, b, [gamma, residual], program, ALL_CONFIGS[config], tma=config in triton_gemm.TMA_CONFIGS)
    ref = linear_reference(layer, [t.float() for t in (x, w, b, gamma, residual)], RunContext({}))
    assert out.shape == ref.shape and out.dtype == torch.float16
    assert relative_error(out.float(), ref) < 3e-3


@pytest.mark.parametrize("config", list(triton_gemm.TMA_CONFIGS))
def test_tma_gemm_reads_a_transposed_kn_weight_and_falls_back_on_odd_k(config):
    # The 1x1 conv hands its prepared [K, N] weight transposed; an odd K cannot be described by TMA at all.
    torch.manual_seed(1)
    for k in (40, 21):
        x = torch.randn(150, k, device=DEVICE).half()
        w_kn = (torch.randn(k, 72, device=DEVICE) / k**0.5).half()
        out = triton_gemm.gemm(x, w_kn.t(), None, [], None, triton_gemm.TMA_CONFIGS[config], tma=True)
        assert relative_error(out.float(), x.float() @ w_kn.float()) < 3e-3


def test_tiles_are_walked_in_row_groups_covering_every_tile_once():
    # 20 row tiles x 3 column tiles: the grouped order must still visit each output tile exactly once.
    torch.manual_seed(2)
    x = torch.randn(20 * 64 - 5, 32, device=DEVICE).half()
    w = (torch.randn(3 * 64 - 7, 32, device=DEVICE) / 32**0.5).half()
    out = triton_gemm.gemm(x, w, None, [], None, triton_gemm.CONFIGS["triton_gemm_64"])
    assert relative_error(out.float(), x.float() @ w.float().t()) < 3e-3


def test_plain_gemm_over_3d_input_without_bias():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32, device=DEVICE).half()
    w = (torch.randn(48, 32, device=DEVICE) / 32**0.5).half()
    out = triton_gemm.gemm(x, w, None, [], None, triton_gemm.CONFIGS["triton_gemm_64"])
    ref = torch.nn.functional.linear(x.float(), w.float())
    assert out.shape == (2, 5, 48) and relative_error(out.float(), ref) < 3e-3
