"""The 8-bit Triton templates against the exact reference, in Triton's interpreter on the CPU (small shapes)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels.registry import RunContext, get_tactic
from kiln.engine.kernels.triton_epilogue import triton

pytestmark = pytest.mark.skipif(triton is None, reason="needs Triton")

if triton is not None:
    from kiln.engine.kernels.triton_quantized_gemm import qconv_1x1_triton, qlinear_triton, qmatmul_triton, weight_n_by_k

RUN = RunContext({})
SMALL = (16, 16, 32, 4, 1)  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages: several tiles and K steps at these shapes


def _attrs(**extra):
    attrs = {"qdtype": "int8", "x_scale": 0.02, "x_zero_point": 0, "activation": None, "activation_attrs": {}}
    attrs.update(residual=False, out_dtype="float32", dtype="float32")
    attrs.update(extra)
    return attrs


def _int8(*shape, low=-128):
    return torch.randint(low, 128, shape, dtype=torch.int8)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"x_zero_point": 5, "activation": "relu"},
        {"activation": "silu", "residual": True},
        {"out_dtype": "int8", "out_scale": 0.05, "out_zero_point": 0},
        {"x_zero_point": -3, "out_dtype": "int8", "out_scale": 0.1, "out_zero_point": 4, "activation": "relu"},
        # an 8-bit residual (a block's requantized output) with and without a zero point
        {"residual": True, "res_scale": 0.04, "res_zero_point": 3, "activation": "relu"},
        {"residual": True, "res_scale": 0.04, "out_dtype": "int8", "out_scale": 0.07, "out_zero_point": -5},
    ],
)
def test_qlinear_kernel_matches_reference(extra):
    torch.manual_seed(0)
    x, w = _int8(3, 13, 40), _int8(24, 40, low=-127)
    bias, w_scale = torch.randn(24), torch.rand(24) * 0.01 + 1e-3
    residual = None
    if extra.get("residual"):
        residual = _int8(3, 13, 24) if "res_scale" in extra else torch.randn(3, 13, 24)
    layer = Layer("qlinear", "q", ["x", "w", "b", "r" if residual is not None else None, "s"], ["y"], _attrs(**extra))
    ref = get_tactic("qlinear", "reference").fn(layer, [x, w, bias, residual, w_scale], RUN)
    w_kn = weight_n_by_k(layer, {"w": w})["w"]
    out = qlinear_triton(SMALL)(layer, [x, w_kn, bias, residual, w_scale], RUN)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.dtype == torch.int8:
        # Requantized: the same integers, except where FP32 contraction moves a value across a rounding edge.
        assert (out.int() - ref.int()).abs().max() <= 1 and (out != ref).float().mean() < 0.01
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("out_zero_point", [0, 3])
def test_requantizing_tail_is_the_references_arithmetic_bit_for_bit(out_zero_point):
    """x = 0 makes the GEMM's output the bias itself (0 * scale + bias is exact, contracted or not), so the tail's
    requantize of values at and beside rounding ties (near_ties) must give the reference's integers exactly: the
    reciprocal multiply, the rounding half to even, an odd zero point added after it, the clamp."""
    from tests.quantize.test_numerics import near_ties

    torch.manual_seed(9)
    bias = near_ties(0.1)[:600]
    n = bias.numel()
    x, w = torch.zeros(2, 32, dtype=torch.int8), _int8(n, 32, low=-127)
    attrs = _attrs(out_dtype="int8", out_scale=0.1, out_zero_point=out_zero_point)
    layer = Layer("qlinear", "q", ["x", "w", "b", None, "s"], ["y"], attrs)
    w_scale = torch.rand(n) * 0.01 + 1e-3
    ref = get_tactic("qlinear", "reference").fn(layer, [x, w, bias, None, w_scale], RUN)
    out = qlinear_triton((16, 128, 32, 4, 1))(layer, [x, weight_n_by_k(layer, {"w": w})["w"], bias, None, w_scale], RUN)
    assert torch.equal(out, ref)


def test_qmatmul_kernel_batched_on_a_transposed_operand():
    torch.manual_seed(1)
    a = _int8(2, 3, 17, 32)
    k = _int8(2, 3, 20, 32)
    b = k.transpose(-1, -2)  # attention's q @ k^T: read in place through strides
    layer = Layer("qmatmul", "q", ["a", "b", None, None, "s"], ["y"], _attrs(x_scale=0.1))
    w_scale = torch.tensor([0.03])
    ref = get_tactic("qmatmul", "reference").fn(layer, [a, b, None, None, w_scale], RUN)
    out = qmatmul_triton(SMALL)(layer, [a, b, None, None, w_scale], RUN)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_qconv_1x1_kernel_writes_nhwc():
    torch.manual_seed(2)
    x = _int8(2, 24, 5, 3).contiguous(memory_format=torch.channels_last)
    w = _int8(20, 24, 1, 1, low=-127)
    residual = torch.randn(2, 20, 5, 3)
    conv = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1}
    layer = Layer("qconv", "q", ["x", "w", None, "r", "s"], ["y"], _attrs(**conv, residual=True, activation="relu"))
    w_scale = torch.rand(20) * 0.01
    ref = get_tactic("qconv", "reference").fn(layer, [x, w, None, residual, w_scale], RUN)
    out = qconv_1x1_triton(SMALL)(layer, [x, weight_n_by_k(layer, {"w": w})["w"], None, residual, w_scale], RUN)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "conv, extra",
    [
        ({"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}, {}),
        ({"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1]}, {"x_zero_point": 9, "activation": "relu"}),
        ({"stride": [1, 1], "padding": [2, 2], "dilation": [2, 2]}, {"out_dtype": "int8", "out_scale": 0.2, "out_zero_point": 0}),
    ],
)
def test_qconv_implicit_gemm_kernel_matches_reference(conv, extra):
    from kiln.engine.kernels.triton_quantized_conv import qconv_triton, weight_n_by_taps

    torch.manual_seed(3)
    x = _int8(2, 8, 7, 6)
    w = _int8(12, 8, 3, 3, low=-127)
    bias, w_scale = torch.randn(12), torch.rand(12) * 0.01 + 1e-3
    attrs = _attrs(**conv, groups=1, kernel_size=[3, 3], **extra)
    layer = Layer("qconv", "q", ["x", "w", "b", None, "s"], ["y"], attrs)
    ref = get_tactic("qconv", "reference").fn(layer, [x, w, bias, None, w_scale], RUN)
    out = qconv_triton(SMALL)(layer, [x, weight_n_by_taps(layer, {"w": w})["w"], bias, None, w_scale], RUN)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if ref.dtype == torch.int8:
        assert (out.int() - ref.int()).abs().max() <= 1 and (out != ref).float().mean() < 0.01
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_quantize_kernel_matches_reference_and_keeps_the_memory_order(memory_format):
    from kiln.engine.kernels.triton_quantize import quantize_triton

    torch.manual_seed(4)
    x = (torch.randn(2, 6, 5, 7) * 3).to(memory_format=memory_format)
    x[0, 0, 0, :4] = torch.tensor([0.25, 0.75, -0.25, 1.25])  # halves: round to even
    layer = Layer("quantize", "q", ["x"], ["y"], {"scale": 0.5, "zero_point": 3, "qmin": -128, "qmax": 127, "qdtype": "int8"})
    ref = get_tactic("quantize", "reference").fn(layer, [x], RUN)
    out = quantize_triton(layer, [x], RUN)
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("scale, zero_point", [(0.1, 0), (0.03, 5), (0.007, -9)])
def test_quantize_kernels_round_near_ties_as_pytorch_does(scale, zero_point):
    """Both quantize tactics (the kernel, the generated one-op program) give the reference's integers exactly on
    values where dividing by the scale and multiplying by its reciprocal round apart."""
    from kiln.engine.kernels.triton_quantize import quantize_generated, quantize_triton
    from tests.quantize.test_numerics import near_ties

    torch.manual_seed(10)
    x = near_ties(scale).view(4, -1)
    attrs = {"scale": scale, "zero_point": zero_point, "qmin": -128, "qmax": 127, "qdtype": "int8", "dtype": "int8"}
    layer = Layer("quantize", "q", ["x"], ["y"], attrs)
    ref = get_tactic("quantize", "reference").fn(layer, [x], RUN)
    assert torch.equal(quantize_triton(layer, [x], RUN), ref)
    assert torch.equal(quantize_generated(layer, [x], RUN), ref)


@pytest.mark.parametrize(
    "conv, extra",
    [
        ({"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}, {"activation": "silu"}),
        ({"stride": [2, 2], "padding": [2, 2], "dilation": [1, 1]}, {"x_zero_point": -6, "out_dtype": "int8", "out_scale": 0.3}),
    ],
)
def test_qconv_depthwise_kernel_matches_reference(conv, extra):
    from kiln.engine.kernels.triton_quantized_depthwise import qdepthwise_triton, weight_taps_by_channel

    torch.manual_seed(5)
    ksize = 3 if conv["padding"] == [1, 1] else 5
    x = _int8(2, 20, 9, 7)
    w = _int8(20, 1, ksize, ksize, low=-127)
    bias, w_scale = torch.randn(20), torch.rand(20) * 0.01 + 1e-3
    attrs = _attrs(**conv, groups=20, kernel_size=[ksize, ksize], depthwise=True, **extra)
    layer = Layer("qconv", "q", ["x", "w", "b", None, "s"], ["y"], attrs)
    ref = get_tactic("qconv", "reference").fn(layer, [x, w, bias, None, w_scale], RUN)
    out = qdepthwise_triton((16, 16, 4))(layer, [x, weight_taps_by_channel(layer, {"w": w})["w"], bias, None, w_scale], RUN)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if ref.dtype == torch.int8:
        assert (out.int() - ref.int()).abs().max() <= 1 and (out != ref).float().mean() < 0.01
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_qconv_kernel_wide_input_loops_over_taps():
    from kiln.engine.kernels.triton_quantized_conv import qconv_triton, weight_n_by_taps

    torch.manual_seed(6)
    x = _int8(1, 40, 6, 5)  # 40 channels >= BLOCK_K / 2: taps outside, two channel blocks inside (one partial)
    w = _int8(18, 40, 3, 3, low=-127)
    w_scale = torch.rand(18) * 0.01 + 1e-3
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "kernel_size": [3, 3]}
    layer = Layer("qconv", "q", ["x", "w", None, None, "s"], ["y"], _attrs(**conv, x_zero_point=11))
    ref = get_tactic("qconv", "reference").fn(layer, [x, w, None, None, w_scale], RUN)
    out = qconv_triton(SMALL)(layer, [x, weight_n_by_taps(layer, {"w": w})["w"], None, None, w_scale], RUN)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
