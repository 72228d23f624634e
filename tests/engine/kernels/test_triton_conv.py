"""The FP16/BF16 implicit-GEMM conv kernel against the conv_epilogue reference (Triton's interpreter on the CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_conv
from kiln.engine.kernels.aten_conv import conv_epilogue_reference
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_conv.triton is None, reason="Triton is not installed")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SMALL = (32, 32, 32, 4, 2)  # a small tile: the interpreter's time grows with the tile


def attrs_of(stride, padding, dilation, activation, residual, activation_attrs=None):
    attrs = {
        "stride": list(stride), "padding": list(padding), "dilation": list(dilation), "transposed": False,
        "output_padding": [0, 0], "groups": 1, "activation": activation, "residual": residual,
    }  # fmt: skip
    if activation == "leaky_relu":  # the converter's attribute name for the slope
        attrs["activation_attrs"] = {"alpha": 0.01, **(activation_attrs or {})}
    elif activation_attrs:
        attrs["activation_attrs"] = activation_attrs
    return attrs


def run_both(
    cin=16, cout=24, hw=(7, 6), k=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), activation="leaky_relu",
    activation_attrs=None, residual=False, bias=True, n=2, config=SMALL, dtype=torch.float16,
):  # fmt: skip
    torch.manual_seed(cin + 7 * cout + k[0])
    attrs = attrs_of(stride, padding, dilation, activation, residual, activation_attrs)
    layer = Layer("conv_epilogue", "c", ["x", "w", "b", "r"], ["y"], attrs)
    x = torch.randn(n, cin, *hw, device=DEVICE).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(cout, cin, *k, device=DEVICE) / (cin * k[0] * k[1]) ** 0.5).to(dtype)
    b = torch.randn(cout, device=DEVICE).to(dtype) if bias else None
    oh = (hw[0] + 2 * padding[0] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (hw[1] + 2 * padding[1] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    r = torch.randn(n, cout, oh, ow, device=DEVICE).to(dtype) if residual else None
    (taps,) = triton_conv.weight_taps(layer, {"w": w}).values()
    out = triton_conv.conv_nhwc(x, taps, b, r, attrs, config)
    ref = conv_epilogue_reference(layer, [t.float() if t is not None else None for t in (x, w, b, r)], None)
    return out, ref


CASES = {
    "3x3": dict(),
    "3x3-s2": dict(stride=(2, 2), hw=(9, 8)),
    "5x5": dict(k=(5, 5), padding=(2, 2), cin=8),
    "7x7-s2-stem-cin3": dict(cin=3, cout=16, k=(7, 7), stride=(2, 2), padding=(3, 3), hw=(12, 11), activation="relu"),
    "dilated": dict(dilation=(2, 2), padding=(2, 2)),
    "1x3-asymmetric": dict(k=(1, 3), padding=(0, 1), hw=(5, 7)),
    "leaky-slope": dict(activation_attrs={"alpha": 0.2}),
    "silu": dict(activation="silu"),
    "residual-relu": dict(activation="relu", residual=True),
    "no-bias": dict(bias=False, activation=None),
    "odd-channels": dict(cin=20, cout=18, hw=(5, 5)),
    "two-channel-blocks": dict(cin=40, cout=40, hw=(5, 4), activation="hardswish"),
    "1x1-s2": dict(k=(1, 1), padding=(0, 0), stride=(2, 2), cin=24, hw=(8, 8)),
}


@pytest.mark.parametrize("kwargs", list(CASES.values()), ids=list(CASES))
def test_matches_the_reference(kwargs):
    out, ref = run_both(**kwargs)
    assert out.shape == ref.shape and out.dtype == torch.float16
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out.float(), ref) < 2e-3


def test_every_tile_config_matches_the_reference():
    # Each config's own K step over 72 channels (several channel blocks, one partial), with a residual and the
    # slope of leaky_relu, tiles cut at both edges. One shape for all, small, for the interpreter's time.
    for name, config in triton_conv.CONFIGS.items():
        out, ref = run_both(cin=72, cout=20, hw=(4, 5), n=1, residual=True, activation_attrs={"alpha": 0.1}, config=config)
        assert relative_error(out.float(), ref) < 2e-3, name


def test_k_step_narrows_for_few_channels_and_takes_the_flat_loop_for_a_stem():
    assert triton_conv.k_step(256, 9 * 256, 64) == (64, True)
    assert triton_conv.k_step(40, 9 * 40, 64) == (64, True)
    assert triton_conv.k_step(20, 9 * 20, 64) == (32, True)
    assert triton_conv.k_step(3, 147, 64) == (64, False)
    assert triton_conv.k_step(3, 12, 64) == (16, False)


@pytest.mark.skipif(DEVICE.type == "cpu", reason="Triton's CPU interpreter computes a BF16 tl.dot wrongly (numpy has no bfloat16)")
def test_bf16_matches_the_reference():
    out, ref = run_both(dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert relative_error(out.float(), ref) < 1e-2


def test_writes_into_the_given_nhwc_buffer():
    attrs = attrs_of((1, 1), (1, 1), (1, 1), "leaky_relu", False)
    layer = Layer("conv", "c", ["x", "w", "b"], ["y"], attrs)
    x = torch.randn(1, 8, 4, 4, device=DEVICE).half()
    w = torch.randn(16, 8, 3, 3, device=DEVICE).half() / 8
    (taps,) = triton_conv.weight_taps(layer, {"w": w}).values()
    buffer = torch.empty(1, 16, 4, 4, device=DEVICE, dtype=torch.half, memory_format=torch.channels_last)
    out = triton_conv.conv_nhwc(x, taps, None, None, attrs, SMALL, out=buffer)
    assert out.data_ptr() == buffer.data_ptr()
    ref = conv_epilogue_reference(layer, [x.float(), w.float(), None, None], None)
    assert relative_error(out.float(), ref) < 2e-3


def test_prepare_declines_a_1x1_stride_1_conv_and_a_missing_weight():
    attrs = attrs_of((1, 1), (0, 0), (1, 1), None, False)
    layer = Layer("conv", "c", ["x", "w", "b"], ["y"], attrs)
    with pytest.raises(ValueError, match="triton_gemm_1x1"):
        triton_conv.weight_taps(layer, {"w": torch.randn(8, 4, 1, 1)})
    with pytest.raises(ValueError, match="known at build time"):
        triton_conv.weight_taps(layer, {})
    with pytest.raises(ValueError, match="prepare made"):
        triton_conv.conv_nhwc(torch.randn(1, 4, 3, 3).half(), torch.randn(8, 4, 3, 3).half(), None, None, attrs, SMALL)


def test_in_64_bit_offsets(monkeypatch):
    # No CPU test can allocate 2**31 elements: force WIDE_INDEX on, the 64-bit variant must compute the same.
    monkeypatch.setattr(triton_conv, "wide_index", lambda *numels: True)
    out, ref = run_both(stride=(2, 2), hw=(9, 8), residual=True)
    assert relative_error(out.float(), ref) < 2e-3
    out, ref = run_both(cin=3, cout=16, k=(7, 7), stride=(2, 2), padding=(3, 3), hw=(8, 8), n=1)
    assert relative_error(out.float(), ref) < 2e-3


def test_prepare_only_rearranges_so_a_plan_built_on_a_gpu_loads_elsewhere():
    # builder/retarget undoes a prepare by replaying it on index tensors: it must move values, never change them.
    layer = Layer("conv_epilogue", "c", ["x", "w", "b", None], ["y"], attrs_of((1, 1), (1, 1), (1, 1), "silu", False))
    w = torch.arange(8 * 4 * 3 * 5).reshape(8, 4, 3, 5)
    (moved,) = triton_conv.weight_taps(layer, {"w": w}).values()
    assert moved.shape == (8, 3, 5, 4) and moved.is_contiguous()
    assert torch.equal(moved.permute(0, 3, 1, 2), w)
