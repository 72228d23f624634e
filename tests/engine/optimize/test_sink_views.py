"""Sinking views below element-wise readers: the GEMM meets its epilogue, copying reshapes become views,
and the network computes what it did (reference tactics, and the Triton GEMM under the interpreter)."""

import pytest
import torch

from kiln.engine.ir.network import Network
from kiln.engine.kernels import triton_gemm
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.optimize.fuse_gemm_epilogue import fuse_gemm_epilogue_layers
from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
from kiln.engine.optimize.sink_views import reshape_groups, sink_view_layers
from tests.engine.optimize.test_fuse_pointwise import run
from tests.helpers import relative_error


def convnext_tail(dtype=torch.float32):
    """ConvNeXt's block tail: x + gamma * permute(linear(permute(x)), NCHW), gamma per channel as [C, 1, 1]."""
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [2, 8, 3, 5], dtype)
    w = net.add_constant("w", (torch.randn(8, 8) * 0.3).to(dtype))
    b = net.add_constant("b", torch.randn(8).to(dtype))
    gamma = net.add_constant("gamma", torch.rand(8, 1, 1).to(dtype))
    (t,) = net.add_layer("permute", [x], [([2, 3, 5, 8], dtype)], {"dims": [0, 2, 3, 1]})
    (y,) = net.add_layer("linear", [t, w, b], [([2, 3, 5, 8], dtype)])
    (p,) = net.add_layer("permute", [y], [([2, 8, 3, 5], dtype)], {"dims": [0, 3, 1, 2]})
    (s,) = net.add_layer("binary", [p, gamma], [([2, 8, 3, 5], dtype)], {"op": "mul"})
    (out,) = net.add_layer("binary", [s, x], [([2, 8, 3, 5], dtype)], {"op": "add"})
    net.outputs.append(out.name)
    return net, {"x": torch.randn(2, 8, 3, 5).to(dtype), **net.constants}


def test_permute_sinks_below_the_layer_scale_and_residual_and_the_linear_takes_them():
    net, values = convnext_tail()
    expected = run(net, values)
    fused = fuse_gemm_epilogue_layers(sink_view_layers(fuse_pointwise_groups(net)))
    assert [layer.kind for layer in fused.layers] == ["permute", "permute", "linear", "permute"]
    linear = fused.layers[2]
    assert len(linear.attrs["epilogue"]["ops"]) == 2
    # gamma now varies along the linear's last dim; the residual is read through the inverse permute.
    assert [list(fused.tensors[n].shape) for n in linear.inputs[3:]] == [[1, 1, 1, 8], [2, 3, 5, 8]]
    assert fused.layers[-1].outputs == net.outputs
    got = run(fused, {**values, **fused.constants})
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(triton_gemm.triton is None, reason="Triton is not installed")
def test_the_sunk_epilogue_runs_in_the_triton_gemm():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, values = convnext_tail(torch.float16)
    expected = run(net, {k: v.float() for k, v in values.items()})
    fused = fuse_gemm_epilogue_layers(sink_view_layers(fuse_pointwise_groups(net)))
    env = {k: v.to(device) for k, v in values.items()}
    env.update(fused.constants)
    for layer in fused.layers:
        ins = [env[n].to(device) if n is not None else None for n in layer.inputs]
        if layer.kind == "linear":
            x, w, b, *extras = ins
            program = Program.from_json(layer.attrs["epilogue"])
            out = triton_gemm.gemm(x, w, b, extras, program, triton_gemm.CONFIGS["triton_gemm_64"])
        else:
            out = ins[0].permute(layer.attrs["dims"])
        env[layer.outputs[0]] = out
    got = env[net.outputs[0]]
    assert got.dtype == torch.float16
    assert relative_error(got.float().cpu(), expected[net.outputs[0]]) < 3e-3


def window_reverse(partial_residual: bool = False):
    """Swin's window reverse before the residual add: [windows, tokens, C] → [B, H, W, C], a copying reshape."""
    torch.manual_seed(1)
    net = Network()
    y = net.add_input("y", [8, 4, 6], torch.float32)
    r_shape = [1, 1, 4, 6] if partial_residual else [2, 4, 4, 6]
    r = net.add_input("r", r_shape, torch.float32)
    (a,) = net.add_layer("reshape", [y], [([2, 2, 2, 2, 2, 6], torch.float32)], {"shape": [2, 2, 2, 2, 2, 6]})
    (p,) = net.add_layer("permute", [a], [([2, 2, 2, 2, 2, 6], torch.float32)], {"dims": [0, 1, 3, 2, 4, 5]})
    (m,) = net.add_layer("reshape", [p], [([2, 4, 4, 6], torch.float32)], {"shape": [2, 4, 4, 6]})
    (out,) = net.add_layer("binary", [m, r], [([2, 4, 4, 6], torch.float32)], {"op": "add"})
    net.outputs.append(out.name)
    return net, {"y": torch.randn(8, 4, 6), "r": torch.randn(r_shape)}


def test_a_copying_reshape_sinks_below_the_residual_add():
    net, values = window_reverse()
    expected = run(net, values)
    sunk = sink_view_layers(net)
    kinds = [layer.kind for layer in sunk.layers]
    assert kinds == ["reshape", "permute", "reshape", "binary", "reshape"]
    add = sunk.layers[3]
    # The add reads the permuted windows as they lie and the residual split the same way.
    assert list(sunk.tensors[add.outputs[0]].shape) == [2, 2, 2, 2, 2, 6]
    torch.testing.assert_close(run(sunk, values), expected, rtol=0, atol=0)


def test_broadcast_operands_follow_the_view_group_by_group_or_keep_it_in_place():
    # [1, 1, 4, 6] varies along W, which the reshape merged from two dims: it maps to [1, 1, 1, 2, 2, 6]...
    net, values = window_reverse(partial_residual=True)
    expected = run(net, values)
    sunk = sink_view_layers(net)
    assert [layer.kind for layer in sunk.layers][-2:] == ["binary", "reshape"]
    assert list(sunk.tensors[sunk.layers[-2].inputs[1]].shape) == [1, 1, 1, 2, 2, 6]
    torch.testing.assert_close(run(sunk, values), expected, rtol=0, atol=0)
    # ...whereas an operand spanning only part of a split group cannot follow the view.
    net = Network()
    y = net.add_input("y", [2, 16, 6], torch.float32)
    c = net.add_constant("c", torch.randn(4, 1))
    (w,) = net.add_layer("linear", [y, net.add_constant("w", torch.randn(6, 6)), None], [([2, 16, 6], torch.float32)])
    (s,) = net.add_layer("reshape", [w], [([2, 4, 4, 6], torch.float32)], {"shape": [2, 4, 4, 6]})
    (out,) = net.add_layer("binary", [s, c], [([2, 4, 4, 6], torch.float32)], {"op": "mul"})
    net.outputs.append(out.name)
    values = {"y": torch.randn(2, 16, 6), **net.constants}
    expected = run(net, values)
    assert [layer.kind for layer in sink_view_layers(net).layers] == ["linear", "reshape", "binary"]
    torch.testing.assert_close(run(net, values), expected)


def test_a_view_with_two_readers_stays():
    net, values = convnext_tail()
    p = net.layers[2].outputs[0]
    (other,) = net.add_layer("unary", [net.tensors[p]], [([2, 8, 3, 5], torch.float32)], {"op": "neg"})
    net.outputs.append(other.name)
    before = [layer.kind for layer in net.layers]
    assert [layer.kind for layer in sink_view_layers(net).layers] == before


def test_reshape_groups_pair_split_and_merged_dims_and_lone_unit_dims():
    assert reshape_groups([2, 2, 2, 2, 2, 6], [2, 4, 4, 6]) == [([0], [0]), ([1, 2], [1]), ([3, 4], [2]), ([5], [3])]
    assert reshape_groups([128, 49, 288], [128, 49, 3, 3, 32]) == [([0], [0]), ([1], [1]), ([2], [2, 3, 4])]
    # A unit dim the reshape drops (a squeezed slice) is a group of its own; symbolic dims pair one to one.
    assert reshape_groups([1, 128, 3], [128, 3]) == [([0], []), ([1], [0]), ([2], [1])]
    assert reshape_groups(["s0", 4, 1], ["s0", 2, 2]) == [([0], [0]), ([1], [1, 2]), ([2], [])]
    assert reshape_groups(["s0", 6], [2, "s0", 3]) is None
