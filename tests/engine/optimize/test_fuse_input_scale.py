"""Input-scale fusion: a squeeze-excite multiply feeding a 1x1 conv becomes the conv's prologue, same values."""

import pytest
import torch

from kiln.engine.ir.network import Network
from kiln.engine.kernels.registry import BuildTarget, tactics_for
from kiln.engine.optimize.fuse_input_scale import fuse_input_scales
from tests.engine.optimize.test_fuse_pointwise import run

CONV = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}
CPU = BuildTarget(torch.device("cpu"), torch.float32)


def se_project(kernel=1, scale_shape=(2, 8, 1, 1), epilogue=False):
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [2, 8, 5, 5], torch.float32)
    s = net.add_input("s", list(scale_shape), torch.float32)
    w = net.add_constant("w", torch.randn(12, 8, kernel, kernel) * 0.3)
    b = net.add_constant("b", torch.randn(12))
    (y,) = net.add_layer("binary", [s, x], [([2, 8, 5, 5], torch.float32)], {"op": "mul"})
    out_hw = 5 - kernel + 1
    inputs, kind, attrs = [y, w, b], "conv", dict(CONV)
    if epilogue:
        inputs, kind, attrs = [y, w, b, None], "conv_epilogue", {**CONV, "activation": "silu", "residual": False}
    (out,) = net.add_layer(kind, inputs, [([2, 12, out_hw, out_hw], torch.float32)], attrs)
    net.outputs.append(out.name)
    return net, {"x": torch.randn(2, 8, 5, 5), "s": torch.rand(*scale_shape), **net.constants}


@pytest.mark.parametrize("epilogue", [False, True])
@pytest.mark.parametrize("scale_shape", [(2, 8, 1, 1), (1, 8, 1, 1)])
def test_multiply_becomes_the_convs_input_scale(epilogue, scale_shape):
    net, values = se_project(scale_shape=scale_shape, epilogue=epilogue)
    expected = run(net, values)
    fused = fuse_input_scales(net)
    assert [layer.kind for layer in fused.layers] == ["conv_epilogue" if epilogue else "conv"]
    conv = fused.layers[0]
    assert conv.attrs["scaled_input"] and conv.inputs[0] == "x" and conv.inputs[-1] == "s"
    assert all("scaled_input" in t.takes for t in tactics_for(conv, CPU))
    got = run(fused, values)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_a_3x3_conv_or_a_second_reader_keeps_the_multiply():
    net, _ = se_project(kernel=3)
    assert [layer.kind for layer in fuse_input_scales(net).layers] == ["binary", "conv"]
    net, _ = se_project()
    y = net.layers[0].outputs[0]
    net.outputs.append(y)
    assert [layer.kind for layer in fuse_input_scales(net).layers] == ["binary", "conv"]
