"""The reference tactics of the 8-bit layers compute the integer arithmetic exactly."""

import torch
import torch.nn.functional as F

from kiln.engine.ir.network import Layer
from kiln.engine.kernels.registry import RunContext, get_tactic
from kiln.quantize.numerics import FP8_MAX, per_channel_weight, quantize

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
    assert torch.equal(out, torch.clamp(torch.round(y / 0.1), -128, 127).to(torch.int8))


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
