"""The fused 1x1-conv Triton GEMM against the conv_epilogue reference (Triton's interpreter on the CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_gemm_1x1
from kiln.engine.kernels.aten_conv import conv_epilogue_reference, weight_as_gemm_1x1
from kiln.engine.kernels.registry import RunContext
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_gemm_1x1.triton is None, reason="Triton is not installed")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONV = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}


# Activations of the op vocabulary, with the attributes the converters give them; the generated
# epilogue must take every one (one entry in UNARY_TRITON, no list per kernel).
ACTIVATIONS = {
    None: {}, "relu": {}, "silu": {}, "sigmoid": {}, "hardswish": {}, "relu6": {}, "gelu": {}, "gelu_tanh": {}, "tanh": {},
    "hardsigmoid": {}, "leaky_relu": {"alpha": 0.2}, "clamp": {"min": -0.5, "max": 1.5},
    "elu": {"alpha": 1.0, "scale": 1.0, "input_scale": 1.0}, "softplus": {"beta": 1.0, "threshold": 20.0},
}  # fmt: skip


def run_both(n, cin, cout, hw, activation, residual, bias=True, dtype=torch.float16):
    torch.manual_seed(cin * 31 + cout)
    x = torch.randn(n, cin, hw, hw, device=DEVICE).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(cout, cin, 1, 1, device=DEVICE) / cin**0.5).to(dtype)
    b = torch.randn(cout, device=DEVICE).to(dtype) if bias else None
    r = torch.randn(n, cout, hw, hw, device=DEVICE).to(dtype) if residual else None
    attrs = {**CONV, "activation": activation, "residual": residual, "activation_attrs": ACTIVATIONS[activation]}
    layer = Layer("conv_epilogue", "c", ["x", "w", "b", "r"], ["y"], attrs)
    (w_mat,) = weight_as_gemm_1x1(layer, {"w": w}).values()
    out = triton_gemm_1x1.gemm_1x1(x, w_mat, b, r, attrs)
    # The reference in FP32: the kernel accumulates in FP32 and rounds once at the end.
    as32 = [t.float() if t is not None else None for t in (x, w, b, r)]
    ref = conv_epilogue_reference(layer, as32, None)
    return out, ref


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_matches_the_reference(activation):
    out, ref = run_both(2, 24, 40, 5, activation, residual=False)
    assert out.shape == ref.shape and out.dtype == torch.float16
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out.float(), ref) < 2e-3


@pytest.mark.parametrize(
    "n,cin,cout,hw",
    [(1, 8, 20, 3), (3, 40, 130, 7), (2, 96, 24, 6), (1, 16, 64, 9)],
    ids=["k8-tiny", "k40-n130-ragged", "project-k96", "exact-blocks"],
)
def test_ragged_sizes_with_residual_and_silu(n, cin, cout, hw):
    out, ref = run_both(n, cin, cout, hw, "silu", residual=True)
    assert relative_error(out.float(), ref) < 2e-3


def test_residual_without_activation_and_no_bias():
    out, ref = run_both(2, 32, 48, 4, None, residual=True, bias=False)
    assert relative_error(out.float(), ref) < 2e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton's CPU interpreter has no bfloat16 (numpy lacks it)")
def test_bfloat16():
    out, ref = run_both(2, 32, 48, 4, "hardswish", residual=False, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and relative_error(out.float(), ref) < 1.6e-2


def test_writes_into_a_given_nhwc_buffer():
    x = torch.randn(1, 16, 4, 4, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    w_mat = torch.randn(16, 32, device=DEVICE).half()
    buffer = torch.empty(1, 4, 4, 32, device=DEVICE).half().permute(0, 3, 1, 2)
    out = triton_gemm_1x1.gemm_1x1(x, w_mat, None, None, {"activation": "relu"}, out=buffer)
    assert out.data_ptr() == buffer.data_ptr()
    ref = torch.relu(x.float().permute(0, 2, 3, 1).reshape(-1, 16) @ w_mat.float()).reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    assert relative_error(out.float(), ref) < 2e-3


def test_fp32_layers_are_refused():
    layer = Layer("conv", "c", ["x", "w", "b"], ["y"], CONV)
    x = torch.randn(1, 8, 2, 2)
    with pytest.raises(ValueError, match="FP16/BF16 only"):
        triton_gemm_1x1.conv_1x1_triton(layer, [x, torch.randn(8, 4), None], None)


@pytest.mark.parametrize("per_image", [True, False])
def test_input_scale_prologue_matches_scaling_first(per_image):
    """A squeeze-excite scale fused into the GEMM's A load gives what x * s then the conv gives."""
    torch.manual_seed(3)
    n, cin, cout, hw = 3, 24, 40, 5
    x = torch.randn(n, cin, hw, hw, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    s = torch.rand(n if per_image else 1, cin, 1, 1, device=DEVICE).half()
    w = (torch.randn(cout, cin, 1, 1, device=DEVICE) / cin**0.5).half()
    b = torch.randn(cout, device=DEVICE).half()
    attrs = {**CONV, "activation": "silu", "residual": False}
    layer = Layer("conv_epilogue", "c", ["x", "w", "b", None, "s"], ["y"], {**attrs, "scaled_input": True})
    (w_mat,) = weight_as_gemm_1x1(layer, {"w": w}).values()
    out = triton_gemm_1x1.conv_1x1_triton(layer, [x, w_mat, b, None, s], RunContext({}))
    scaled = (x * s).float()  # the multiply in FP16, as the unfused layer rounds it
    ref = conv_epilogue_reference(Layer("conv_epilogue", "c", [], [], attrs), [scaled, w.float(), b.float(), None], None)
    assert relative_error(out.float(), ref) < 2e-3
