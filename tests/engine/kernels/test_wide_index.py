"""Kernels whose tensors pass 2**31 elements index them in 64 bits (WIDE_INDEX); every other launch in 32.

No test can allocate such a tensor on a CPU, so these force WIDE_INDEX on at small shapes: the 64-bit
variant of each template must compute what the 32-bit one does (Triton's interpreter on the CPU)."""

import pytest
import torch

from kiln.engine.kernels import triton_depthwise, triton_gemm
from kiln.engine.kernels.codegen.tiles import INT32_MAX, span, wide_index
from kiln.engine.kernels.triton_epilogue import triton
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_wide_index_is_chosen_only_past_32_bit_offsets():
    assert not wide_index(10, INT32_MAX)
    assert wide_index(10, INT32_MAX + 1)
    t = torch.empty(3, 5).t()  # shape (5, 3), strides (1, 5): offsets reach 4 * 1 + 2 * 5
    assert span(t) == 15


def always_wide(monkeypatch, module):
    monkeypatch.setattr(module, "wide_index", lambda *numels: True)


@pytest.mark.parametrize("wide", [False, True])
def test_fp16_gemm_in_either_width(monkeypatch, wide):
    if wide:
        always_wide(monkeypatch, triton_gemm)
    torch.manual_seed(3)
    x = torch.randn(70, 40, device=DEVICE).half()
    w = (torch.randn(36, 40, device=DEVICE) / 40**0.5).half()
    b = torch.randn(36, device=DEVICE).half()
    out = triton_gemm.gemm(x, w, b, [], None, triton_gemm.CONFIGS["triton_gemm_64"])
    assert relative_error(out.float(), x.float() @ w.float().t() + b.float()) < 3e-3


def test_depthwise_in_64_bits(monkeypatch):
    from tests.engine.kernels.test_triton_depthwise import run_both

    always_wide(monkeypatch, triton_depthwise)
    out, ref = run_both(k=5, padding=2, residual=True)
    assert relative_error(out.float(), ref) < 3e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="reuses the 8-bit interpreter tests, which build their tensors on the CPU")
def test_quantized_templates_in_64_bits(monkeypatch):
    from kiln.engine.kernels import triton_quantized_conv, triton_quantized_depthwise, triton_quantized_gemm
    from tests.quantize import test_triton_kernels as q

    for module in (triton_quantized_gemm, triton_quantized_conv, triton_quantized_depthwise):
        always_wide(monkeypatch, module)
    q.test_qmatmul_kernel_batched_on_a_transposed_operand()
    q.test_qconv_1x1_kernel_writes_nhwc()
    q.test_qlinear_kernel_matches_reference({"activation": "silu", "residual": True})
    q.test_qconv_implicit_gemm_kernel_matches_reference({"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1]}, {})
    q.test_qconv_kernel_wide_input_loops_over_taps()
    q.test_qconv_depthwise_kernel_matches_reference({"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}, {"activation": "silu"})
