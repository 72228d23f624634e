"""The fused depthwise-conv Triton kernel against the conv_epilogue reference (Triton's interpreter on the CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_depthwise
from kiln.engine.kernels.aten_conv import conv_epilogue_reference
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_depthwise.triton is None, reason="Triton is not installed")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_both(c=24, hw=9, k=3, stride=1, padding=1, dilation=1, activation="silu", residual=False, bias=True, n=2, config=None):
    torch.manual_seed(c + 7 * k + stride)
    attrs = {
        "stride": [stride, stride], "padding": [padding, padding], "dilation": [dilation, dilation], "transposed": False,
        "output_padding": [0, 0], "groups": c, "activation": activation, "residual": residual,
    }  # fmt: skip
    layer = Layer("conv_epilogue", "dw", ["x", "w", "b", "r"], ["y"], attrs)
    x = torch.randn(n, c, hw, hw, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, 1, k, k, device=DEVICE) * 0.3).half()
    b = torch.randn(c, device=DEVICE).half() if bias else None
    out_hw = (hw + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    r = torch.randn(n, c, out_hw, out_hw, device=DEVICE).half() if residual else None
    (taps,) = triton_depthwise.weight_as_taps(layer, {"w": w}).values()
    out = triton_depthwise.depthwise(x, taps, b, r, attrs, config=config)
    ref = conv_epilogue_reference(layer, [t.float() if t is not None else None for t in (x, w, b, r)], None)
    return out, ref


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(stride=2),
        dict(k=5, padding=2),
        dict(k=5, stride=2, padding=2, c=40),
        dict(c=20, hw=7, activation="hardswish"),
        dict(c=72, hw=6, activation=None, residual=True),
        dict(dilation=2, padding=2, activation="relu6"),
        dict(c=8, hw=5, activation="sigmoid", bias=False),
        dict(k=3, padding=0, activation="relu", n=1, hw=4),
    ],
    ids=["3x3", "3x3-s2", "5x5", "5x5-s2-c40", "c20-hardswish", "c72-residual", "dilated-relu6", "c8-sigmoid-nobias", "valid-relu"],
)
def test_matches_the_reference(kwargs):
    out, ref = run_both(**kwargs)
    assert out.shape == ref.shape and out.dtype == torch.float16
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out.float(), ref) < 2e-3


@pytest.mark.parametrize("config", list(triton_depthwise.CONFIGS))
def test_every_tile_config_matches_the_reference(config):
    # ConvNeXt's 7x7 with a residual, over more channels than one tile holds (tiles cut at the channel edge).
    out, ref = run_both(c=150, hw=8, k=7, padding=3, activation="gelu", residual=True, config=triton_depthwise.CONFIGS[config])
    assert relative_error(out.float(), ref) < 2e-3


def test_prepare_refuses_a_grouped_conv_that_is_not_depthwise():
    layer = Layer("conv", "g", ["x", "w", "b"], ["y"], {"groups": 4})
    with pytest.raises(ValueError, match="one filter per channel"):
        triton_depthwise.weight_as_taps(layer, {"w": torch.randn(8, 2, 3, 3)})
