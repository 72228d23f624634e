"""Composing row moves: Swin's roll + window partition becomes one row gather that computes the same tensor."""

import torch

from kiln.engine.ir.network import Network
from kiln.engine.optimize.compose_gathers import compose_gather_layers
from tests.engine.optimize.test_fuse_pointwise import run

F32 = torch.float32


def shifted_window_partition():
    """torch.roll(x, (-1, -1), (1, 2)) as two index_selects, then 2x2 windows of a [2, 4, 4, 6] map."""
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [2, 4, 4, 6], F32)
    shift = net.add_constant("shift", torch.tensor([1, 2, 3, 0]))
    (h,) = net.add_layer("index_select", [x, shift], [([2, 4, 4, 6], F32)], {"dim": 1})
    (w,) = net.add_layer("index_select", [h, shift], [([2, 4, 4, 6], F32)], {"dim": 2})
    (a,) = net.add_layer("reshape", [w], [([2, 2, 2, 2, 2, 6], F32)], {"shape": [2, 2, 2, 2, 2, 6]})
    (p,) = net.add_layer("permute", [a], [([2, 2, 2, 2, 2, 6], F32)], {"dims": [0, 1, 3, 2, 4, 5]})
    (m,) = net.add_layer("reshape", [p], [([8, 4, 6], F32)], {"shape": [8, 4, 6]})
    (out,) = net.add_layer("unary", [m], [([8, 4, 6], F32)], {"op": "neg"})
    net.outputs.append(out.name)
    return net, {"x": torch.randn(2, 4, 4, 6), **net.constants}


def test_roll_and_window_partition_become_one_gather():
    net, values = shifted_window_partition()
    expected = run(net, values)
    composed = compose_gather_layers(net)
    assert [layer.kind for layer in composed.layers] == ["reshape", "index_select", "reshape", "unary"]
    gather = composed.layers[1]
    assert gather.attrs == {"dim": 0} and composed.constants[gather.inputs[1]].shape == (32,)
    torch.testing.assert_close(run(composed, {**values, **composed.constants}), expected, rtol=0, atol=0)


def test_a_value_read_twice_inside_the_chain_ends_it_there():
    net, values = shifted_window_partition()
    w = net.layers[1].outputs[0]
    (other,) = net.add_layer("unary", [net.tensors[w]], [([2, 4, 4, 6], F32)], {"op": "neg"})
    net.outputs.append(other.name)
    expected = run(net, values)
    composed = compose_gather_layers(net)
    # The two index_selects compose (two kernels, one gather); the partition keeps its own copy.
    assert [layer.kind for layer in composed.layers][:3] == ["reshape", "index_select", "reshape"]
    assert [layer.kind for layer in composed.layers].count("index_select") == 1
    torch.testing.assert_close(run(composed, {**values, **composed.constants}), expected, rtol=0, atol=0)


def test_chains_of_one_kernel_or_moving_the_last_dim_are_left_alone():
    net, _ = shifted_window_partition()
    net.layers = net.layers[2:]  # the partition alone: one copy, nothing to save
    net.layers[0].inputs[0] = "x"
    kinds = [layer.kind for layer in net.layers]
    assert [layer.kind for layer in compose_gather_layers(net).layers] == kinds
    net = Network()
    x = net.add_input("x", [4, 6], F32)
    idx = net.add_constant("idx", torch.tensor([5, 4, 3, 2, 1, 0]))
    (a,) = net.add_layer("index_select", [x, idx], [([4, 6], F32)], {"dim": 1})
    (b,) = net.add_layer("index_select", [a, idx], [([4, 6], F32)], {"dim": 1})
    net.outputs.append(b.name)
    assert [layer.kind for layer in compose_gather_layers(net).layers] == ["index_select", "index_select"]
