"""GEMM epilogue fusion: a linear absorbs the element-wise layer after it; the result is unchanged."""

import torch

from kiln.engine.ir.network import Network
from kiln.engine.kernels.registry import BuildTarget, tactics_for
from kiln.engine.optimize.fuse_gemm_epilogue import fuse_gemm_epilogue_layers
from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
from tests.engine.optimize.test_fuse_pointwise import run

CPU = BuildTarget(torch.device("cpu"), torch.float32)


def mlp_block():
    """out = x + gamma * gelu(x @ W^T + b): a transformer MLP's tail with a layer scale and a residual."""
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [2, 5, 16], torch.float32)
    w = net.add_constant("w", torch.randn(16, 16) * 0.2)
    b = net.add_constant("b", torch.randn(16))
    gamma = net.add_constant("gamma", torch.rand(16))
    (y,) = net.add_layer("linear", [x, w, b], [([2, 5, 16], torch.float32)])
    (g,) = net.add_layer("unary", [y], [([2, 5, 16], torch.float32)], {"op": "gelu"})
    (s,) = net.add_layer("binary", [g, gamma], [([2, 5, 16], torch.float32)], {"op": "mul"})
    (out,) = net.add_layer("binary", [x, s], [([2, 5, 16], torch.float32)], {"op": "add"})
    net.outputs.append(out.name)
    return net, {"x": torch.randn(2, 5, 16), **net.constants}


def test_linear_absorbs_the_fused_group_after_it():
    net, values = mlp_block()
    expected = run(net, values)
    fused = fuse_gemm_epilogue_layers(fuse_pointwise_groups(net))
    assert [layer.kind for layer in fused.layers] == ["linear"]
    layer = fused.layers[0]
    assert layer.inputs[:3] == ["x", "w", "b"] and sorted(layer.inputs[3:]) == ["gamma", "x"]
    assert len(layer.attrs["epilogue"]["ops"]) == 3
    got = run(fused, values)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-6)


def test_linear_absorbs_a_single_layer_and_only_epilogue_tactics_remain():
    net, values = mlp_block()
    net.layers = net.layers[:2]
    net.outputs = [net.layers[1].outputs[0]]
    expected = run(net, values)
    fused = fuse_gemm_epilogue_layers(net)
    assert [layer.kind for layer in fused.layers] == ["linear"]
    assert all("epilogue" in t.takes for t in tactics_for(fused.layers[0], CPU))
    torch.testing.assert_close(run(fused, values)[net.outputs[0]], expected[net.outputs[0]], rtol=1e-6, atol=1e-6)


def test_a_linear_output_with_two_readers_is_not_fused():
    net, _ = mlp_block()
    y = net.layers[0].outputs[0]
    (other,) = net.add_layer("unary", [net.tensors[y]], [([2, 5, 16], torch.float32)], {"op": "neg"})
    net.outputs.append(other.name)
    fused = fuse_gemm_epilogue_layers(fuse_pointwise_groups(net))
    assert "epilogue" not in fused.layers[0].attrs
