"""Pointwise fusion: which element-wise layers become one fused_pointwise layer, and that the fused
layer's reference computes exactly what the separate layers did."""

import torch

from kiln.engine.ir.network import Network
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, RunContext, tactics_for
from kiln.engine.optimize.fuse_pointwise import MAX_OPS, fuse_pointwise_groups

CPU = BuildTarget(torch.device("cpu"), torch.float32)
FULL = [2, 8, 4, 4]


def run(net: Network, values: dict) -> dict:
    env = dict(values)
    for layer in net.layers:
        (ref,) = [t for t in tactics_for(layer, CPU) if t.name == REFERENCE]
        out = ref.fn(layer, [env.get(n) if n is not None else None for n in layer.inputs], RunContext({}))
        for name, value in zip(layer.outputs, [out] if isinstance(out, torch.Tensor) else out):
            env[name] = value
    return {n: env[n] for n in net.outputs}


def se_gelu_network():
    """out = gelu(x * sigmoid(s) + bias): a squeeze-excite scale, a per-channel bias and an activation."""
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", FULL, torch.float32)
    s = net.add_input("s", [2, 8, 1, 1], torch.float32)
    bias = net.add_constant("bias", torch.randn(8, 1, 1))
    (sig,) = net.add_layer("unary", [s], [([2, 8, 1, 1], torch.float32)], {"op": "sigmoid"})
    (y,) = net.add_layer("binary", [x, sig], [(FULL, torch.float32)], {"op": "mul"})
    (z,) = net.add_layer("binary", [y, bias], [(FULL, torch.float32)], {"op": "add"})
    (out,) = net.add_layer("unary", [z], [(FULL, torch.float32)], {"op": "gelu"})
    net.outputs.append(out.name)
    values = {"x": torch.randn(FULL), "s": torch.randn(2, 8, 1, 1), **net.constants}
    return net, values


def test_chain_with_broadcasts_becomes_one_layer_that_computes_the_same():
    net, values = se_gelu_network()
    expected = run(net, values)
    fused = fuse_pointwise_groups(net)
    assert [layer.kind for layer in fused.layers] == ["fused_pointwise"]
    layer = fused.layers[0]
    assert len(layer.attrs["program"]["ops"]) == 4 and sorted(layer.inputs) == ["bias", "s", "x"]
    got = run(fused, values)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_value_read_outside_before_the_group_ends_splits_the_group():
    net, values = se_gelu_network()
    y = net.layers[1].outputs[0]
    # A non-fusable reader of y placed between the mul and the add: the add and gelu may not take the mul along.
    (probe,) = net.add_layer("reduce", [net.tensors[y]], [([2, 8], torch.float32)], {"op": "sum", "dims": [2, 3], "keepdim": False})
    net.layers.insert(2, net.layers.pop())
    net.outputs.append(probe.name)
    expected = run(net, values)
    fused = fuse_pointwise_groups(net)
    kinds = [layer.kind for layer in fused.layers]
    assert kinds == ["fused_pointwise", "reduce", "fused_pointwise"], kinds
    assert run(fused, values).keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(run(fused, values)[name], expected[name], rtol=0, atol=0)


def test_intermediate_read_after_the_group_becomes_a_second_output():
    net, values = se_gelu_network()
    z = net.layers[2].outputs[0]
    (neg,) = net.add_layer("reduce", [net.tensors[z]], [([2, 8], torch.float32)], {"op": "amax", "dims": [2, 3], "keepdim": False})
    net.outputs.append(neg.name)
    expected = run(net, values)
    fused = fuse_pointwise_groups(net)
    assert [layer.kind for layer in fused.layers] == ["fused_pointwise", "reduce"]
    assert len(fused.layers[0].outputs) == 2
    got = run(fused, values)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_small_value_needed_outside_is_not_handed_out_by_a_full_size_group():
    net, values = se_gelu_network()
    sig = net.layers[0].outputs[0]
    net.outputs.append(sig)  # the [2, 8, 1, 1] sigmoid is also a network output
    fused = fuse_pointwise_groups(net)
    assert [layer.kind for layer in fused.layers] == ["unary", "fused_pointwise"]
    got, expected = run(fused, values), run(se_gelu_network()[0], values)
    torch.testing.assert_close(got[net.outputs[0]], expected[net.outputs[0]], rtol=0, atol=0)


def test_ops_without_a_triton_form_and_single_layers_stay_as_they_are():
    net = Network()
    x = net.add_input("x", FULL, torch.float32)
    (a,) = net.add_layer("unary", [x], [(FULL, torch.bool)], {"op": "isnan"})
    (b,) = net.add_layer("unary", [x], [(FULL, torch.float32)], {"op": "relu"})
    net.outputs += [a.name, b.name]
    fused = fuse_pointwise_groups(net)
    assert [layer.kind for layer in fused.layers] == ["unary", "unary"]


def test_group_size_is_bounded():
    net = Network()
    y = net.add_input("x", FULL, torch.float32)
    for _ in range(MAX_OPS + 5):
        (y,) = net.add_layer("unary", [y], [(FULL, torch.float32)], {"op": "relu"})
    net.outputs.append(y.name)
    fused = fuse_pointwise_groups(net)
    assert [len(layer.attrs["program"]["ops"]) for layer in fused.layers] == [MAX_OPS, 5]


def test_members_kept_in_fp32_are_still_reported():
    from kiln.engine.optimize.precision import kept_fp32

    net = Network()
    x = net.add_input("x", FULL, torch.float32)
    (y,) = net.add_layer("unary", [x], [(FULL, torch.float32)], {"op": "exp", "fp32_reason": "unary exp: overflows FP16"})
    (z,) = net.add_layer("cast", [y], [(FULL, torch.float16)], {"dtype": "float16"})
    net.outputs.append(z.name)
    exp_name = net.layers[0].name
    fused = fuse_pointwise_groups(net)
    assert [layer.kind for layer in fused.layers] == ["fused_pointwise"]
    assert kept_fp32(fused.layers) == {exp_name: "unary exp: overflows FP16"}
