"""The depthwise conv + channel norm kernel (and the unfused tactics) against the depthwise_norm reference, which runs
the conv and the norm as the separate layers did, in FP32 (Triton's interpreter on the CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_depthwise_norm
from kiln.engine.kernels.depthwise_norm import depthwise_norm_reference, weight_as_taps
from kiln.engine.kernels.registry import RunContext, get_tactic
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_depthwise_norm.triton is None, reason="Triton is not installed")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_case(c=24, hw=7, k=3, stride=1, conv_bias=True, affine=True, norm="layer", activation=None, n=2):
    """A depthwise_norm layer as fuse_depthwise_norm makes it, and FP16 inputs (the weight in its original layout)."""
    torch.manual_seed(c + 7 * k + stride)
    conv_attrs = {
        "stride": [stride, stride], "padding": [k // 2, k // 2], "dilation": [1, 1], "transposed": False,
        "output_padding": [0, 0], "groups": c,
    }  # fmt: skip
    kind = "conv"
    if activation is not None:
        kind, conv_attrs = "conv_epilogue", {**conv_attrs, "activation": activation, "residual": False}
    attrs = {
        "conv": {"kind": kind, "attrs": conv_attrs},
        "norm": {"type": norm, "shape": [c], "eps": 1e-6 if norm == "layer" else None},
        "conv_dtype": "float16",
    }
    layer = Layer("depthwise_norm", "dwln", ["x", "w", "b", "nw", "nb"], ["y"], attrs, "float16")
    x = torch.randn(n, c, hw, hw + 1, device=DEVICE).half().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, 1, k, k, device=DEVICE) * 0.3).half()
    b = torch.randn(c, device=DEVICE).half() if conv_bias else None
    nw = (1 + 0.5 * torch.randn(c, device=DEVICE)).half() if affine else None
    nb = torch.randn(c, device=DEVICE).half() if affine and norm == "layer" else None
    return layer, [x, w, b, nw, nb]


def reference(layer, inputs):
    return depthwise_norm_reference(layer, [t.float() if t is not None else None for t in inputs], RunContext({}))


def run_tactic(name, layer, inputs):
    """The tactic on its prepared weight, as the builder would run it."""
    tactic = get_tactic("depthwise_norm", name)
    prepared = tactic.prepare(layer, {"w": inputs[1]}) if tactic.prepare else {}
    return tactic.fn(layer, [inputs[0], prepared.get("w", inputs[1]), *inputs[2:]], RunContext({}))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(stride=2),
        dict(k=5, c=40),
        dict(k=5, stride=2, c=40, conv_bias=False),
        dict(k=7, c=96, hw=5, n=1),
        dict(k=7, stride=2, c=20, affine=False),
        dict(c=24, conv_bias=False, affine=False),
        dict(c=40, norm="rms"),
        dict(c=24, activation="gelu", k=5),
    ],
    ids=["3x3", "3x3-s2", "5x5-c40", "5x5-s2-nobias", "7x7-c96", "7x7-s2-c20-noaffine", "nobias-noaffine", "rms", "gelu"],
)
def test_fused_kernel_matches_the_reference(kwargs):
    layer, inputs = make_case(**kwargs)
    out = run_tactic("triton_depthwise_norm", layer, inputs)
    ref = reference(layer, inputs)
    assert out.shape == ref.shape and out.dtype == torch.float16 and out.is_contiguous()
    assert relative_error(out.float(), ref) < 2e-3


@pytest.mark.parametrize("name", list(triton_depthwise_norm.CONFIGS))
def test_every_config_matches_the_reference(name):
    # More pixels than one program holds at the wide configs, channels past a power of two.
    layer, inputs = make_case(c=150, hw=3, k=7, n=1)
    out = run_tactic(name, layer, inputs)
    assert relative_error(out.float(), reference(layer, inputs)) < 2e-3


def test_unfused_tactic_matches_the_reference():
    # One of the *_unfused tactics (each Triton depthwise tile then the row norm): the path the builder may keep.
    layer, inputs = make_case(c=40, k=5, stride=2)
    out = run_tactic("triton_depthwise_unfused", layer, inputs)
    assert out.shape == (2, 4, 4, 40)
    assert relative_error(out.float(), reference(layer, inputs)) < 2e-3


def test_prepare_names_the_weight_it_needs():
    layer, _ = make_case(c=8)
    with pytest.raises(ValueError, match="one filter per channel"):
        weight_as_taps(layer, {"w": torch.randn(8, 2, 3, 3)})


def test_refuses_more_channels_than_a_program_holds():
    c = triton_depthwise_norm.MAX_CHANNELS * 2
    taps = torch.zeros(3, 3, c, dtype=torch.float16)
    x = torch.zeros(1, c, 3, 3, dtype=torch.float16)
    attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}
    with pytest.raises(ValueError, match="at most"):
        triton_depthwise_norm.depthwise_norm(x, taps, None, None, None, attrs, {"type": "layer", "shape": [c], "eps": 1e-5})
