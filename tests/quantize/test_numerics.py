"""The reference tactics of the 8-bit layers compute the integer arithmetic exactly."""

import pytest
import torch
import torch.nn.functional as F

from kiln.engine.ir.network import Layer
from kiln.engine.kernels.registry import RunContext, get_tactic
from kiln.quantize.numerics import FP8_MAX, dequantize, per_channel_weight, quantize, reciprocal

RUN = RunContext({})


def _int_conv(x_q, w_q, zp, stride, padding, groups):
    """int64 convolution by unfold: an independent check of the exact INT32 accumulator."""
    n, _, h, w = x_q.shape
    cout, cin_g, kh, kw = w_q.shape
    xs = (x_q.long() - zp).float().double()  # small integers: exact in float64 for unfold's padding
    cols = F.unfold(xs, (kh, kw), padding=padding, stride=stride).round().long()  # [N, C*kh*kw, L]
    cols = cols.view(n, groups, cin_g * kh * kw, -1)
    wg = w_q.long().view(groups, cout // groups, -1)
    acc = torch.einsum("gok,ngkl->ngol", wg, cols).reshape(n, cout, -1)
    ho = (h + 2 * padding - kh) // stride + 1
    return acc.view(n, cout, ho, -1)


def _qconv_layer(groups, **extra):
    attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": groups, "qdtype": "int8"}
    attrs.update(x_scale=0.05, x_zero_point=3, activation=None, residual=False, out_dtype="float32", dtype="float32")
    attrs.update(extra)
    return Layer("qconv", "q", ["x", "w", "b", None, "s"], ["y"], attrs)


def test_qconv_reference_is_the_exact_integer_convolution_then_the_epilogue():
    torch.manual_seed(0)
    for groups, cin in ((1, 8), (2, 8), (8, 8)):  # plain, grouped, depthwise
        x_q = torch.randint(-128, 128, (2, cin, 6, 6), dtype=torch.int8)
        w_q = torch.randint(-127, 128, (8, cin // groups, 3, 3), dtype=torch.int8)
        bias = torch.randn(8)
        w_scale = torch.rand(8) * 0.01 + 1e-3
        layer = _qconv_layer(groups)
        out = get_tactic("qconv", "reference").fn(layer, [x_q, w_q, bias, None, w_scale], RUN)
        acc = _int_conv(x_q, w_q, 3, 1, 1, groups)
        scale = w_scale * torch.tensor(0.05, dtype=torch.float32)
        expected = acc.float() * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        assert torch.equal(out, expected)


def test_qconv_epilogue_residual_activation_and_requantize():
    torch.manual_seed(1)
    x_q = torch.randint(-128, 128, (1, 4, 5, 5), dtype=torch.int8)
    w_q = torch.randint(-127, 128, (4, 4, 3, 3), dtype=torch.int8)
    residual = torch.randn(1, 4, 5, 5)
    layer = _qconv_layer(1, activation="relu", residual=True, out_dtype="int8", out_scale=0.1, out_zero_point=0)
    out = get_tactic("qconv", "reference").fn(layer, [x_q, w_q, None, residual, torch.full((4,), 0.01)], RUN)
    acc = _int_conv(x_q, w_q, 3, 1, 1, 1).float()
    y = torch.relu(acc * (torch.tensor(0.01) * torch.tensor(0.05)) + residual)
    assert out.dtype == torch.int8
    inv_scale = 1 / torch.tensor(0.1)  # FP32: requantizing multiplies by the reciprocal, as PyTorch's quantize ops do
    assert torch.equal(out, torch.clamp(torch.round(y * inv_scale), -128, 127).to(torch.int8))


def test_qlinear_reference_large_k_is_exact():
    # K = 4096 is past FP32's exact range: the reference switches to float64.
    torch.manual_seed(2)
    x_q = torch.randint(-128, 128, (3, 4096), dtype=torch.int8)
    w_q = torch.randint(-127, 128, (5, 4096), dtype=torch.int8)
    attrs = {"qdtype": "int8", "x_scale": 1.0, "x_zero_point": 0, "out_dtype": "float32"}
    layer = Layer("qlinear", "q", ["x", "w", None, None, "s"], ["y"], attrs)
    out = get_tactic("qlinear", "reference").fn(layer, [x_q, w_q, None, None, torch.ones(5)], RUN)
    exact = (x_q.long() @ w_q.long().t()).double()
    assert torch.equal(out.double(), exact.float().double())


def test_per_channel_weight_and_fp8_rounding():
    w = torch.randn(6, 3, 3, 3)
    w_q, scales = per_channel_weight(w, 0, "int8")
    assert w_q.dtype == torch.int8 and w_q.abs().amax(dim=(1, 2, 3)).eq(127).all()
    back = w_q.float() * torch.tensor(scales).view(-1, 1, 1, 1)
    assert (back - w).abs().max() <= max(scales) / 2 + 1e-7
    w8, scales8 = per_channel_weight(w, 0, "fp8")
    assert w8.dtype == torch.float8_e4m3fn
    # e4m3 rounding is what torch's float8 cast does, to the range's edge.
    assert torch.equal(w8.float(), (w / torch.tensor(scales8).view(-1, 1, 1, 1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float())
    assert quantize(torch.tensor([0.5, 1.5, 2.5, -0.5]), 1.0, 0, "int8").tolist() == [0, 2, 2, 0]  # half to even, as rint


def test_qconv_reference_long_reduction_is_exact():
    # K = 256 * 3 * 3 = 2304 is past FP32's exact range: the reference sums exact FP32 chunks in float64.
    x_q = torch.full((1, 256, 5, 5), -128, dtype=torch.int8)
    x_q[0, 0, 2, 2] = -127  # an odd product: the sums are odd integers above 2^24
    w_q = torch.full((4, 256, 3, 3), 127, dtype=torch.int8)
    layer = _qconv_layer(1, x_zero_point=0)
    scale = torch.ones(4)
    out = get_tactic("qconv", "reference").fn(layer, [x_q, w_q, None, None, scale], RUN)
    acc = _int_conv(x_q, w_q, 0, 1, 1, 1)
    assert acc.abs().max() > 2**24
    expected = acc.float() * (scale * torch.tensor(0.05, dtype=torch.float32)).view(1, -1, 1, 1)
    assert torch.equal(out, expected)


def near_ties(scale: float) -> torch.Tensor:
    """FP32 values at and one ulp either side of (k + 1/2) * scale: where x / scale and x * (1 / scale) round to
    different integers for some k (the two spellings disagree on about one value in ten here)."""
    base = (torch.arange(-140, 140, dtype=torch.float32) + 0.5) * torch.tensor(scale)
    return torch.cat([torch.nextafter(base, base + 1), base, torch.nextafter(base, base - 1), torch.randn(500) * 100 * scale])


@pytest.mark.parametrize("scale, zero_point", [(0.1, 0), (0.03, 5), (0.007, -9), (1 / 3, 0)])
def test_quantize_is_pytorchs_own_arithmetic(scale, zero_point):
    """QAT and PT2E graphs compile to these numbers: quantize must give exactly what torch's fake-quantize and
    quantized_decomposed ops give (x times the FP32 reciprocal of the scale), not an IEEE division."""
    from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

    torch.manual_seed(7)
    x = near_ties(scale)
    q = quantize(x, scale, zero_point, "int8", -128, 127)
    # ATen's fake-quantize rounds a float64 scale to FP32 first, as Kiln does.
    fake = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127)
    assert torch.equal(dequantize(q, float(torch.tensor(scale)), zero_point), fake)
    # quantized_decomposed takes 1 / scale in float64: the same FP32 number for the FP32 scales a PT2E graph carries
    # (its observers' scales are FP32 tensors).
    scale32 = float(torch.tensor(scale))
    decomposed = torch.ops.quantized_decomposed.quantize_per_tensor(x, scale32, zero_point, -128, 127, torch.int8)
    assert torch.equal(quantize(x, scale32, zero_point, "int8", -128, 127), decomposed)
    divided = (torch.round(x / torch.tensor(scale)) + zero_point).clamp(-128, 127).to(torch.int8)
    assert scale == 1 / 3 or not torch.equal(q, divided), "the values should tell the two spellings apart"


def test_per_channel_quantize_is_pytorchs_own_arithmetic():
    torch.manual_seed(8)
    scales = torch.tensor([0.1, 0.03, 0.007])
    x = torch.stack([near_ties(float(s))[:1200] for s in scales])
    q = quantize(x, scales.view(-1, 1), 0, "int8", -127, 127)
    fake = torch.fake_quantize_per_channel_affine(x, scales, torch.zeros(3, dtype=torch.int32), 0, -127, 127)
    assert torch.equal(q.float() * scales.view(-1, 1), fake)


def test_reciprocal_is_one_fp32_rounding_computed_once():
    for scale in (0.1, 0.03, 1 / 3, 7e-3, 2.5e-5, 448.0):
        s32 = torch.tensor(scale, dtype=torch.float32)
        assert reciprocal(scale) == float(1 / s32)  # a Python float, FP32-exact: a kernel argument carries it unchanged
        assert torch.equal(reciprocal(s32.view(1)), 1 / s32.view(1))
