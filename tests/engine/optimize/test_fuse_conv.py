"""Conv epilogue fusion: which conv → [add] → [activation] chains become one conv_epilogue layer, and
that the fused layer's reference computes what the chain did."""

from types import SimpleNamespace

import pytest
import torch

from kiln.engine.ir.network import Network
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, RunContext, tactics_for
from kiln.engine.optimize.fuse_conv import fuse_conv_epilogues
from tests.helpers import relative_error

CONV = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}
CUDA_SETTINGS = SimpleNamespace(settings=SimpleNamespace(device=torch.device("cuda")))
CPU = BuildTarget(torch.device("cpu"), torch.float32)


def chain(ops: list[str], residual_reader_count: int = 1):
    """x → conv 1x1 → ops ("add" adds the input r, anything else is a unary op); returns the network and its values."""
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [2, 8, 5, 5], torch.float32)
    r = net.add_input("r", [2, 16, 5, 5], torch.float32)
    w = net.add_constant("w", torch.randn(16, 8, 1, 1) * 0.3)
    b = net.add_constant("b", torch.randn(16))
    (y,) = net.add_layer("conv", [x, w, b], [([2, 16, 5, 5], torch.float32)], dict(CONV))
    for op in ops:
        if op == "add":
            (y,) = net.add_layer("binary", [y, r], [([2, 16, 5, 5], torch.float32)], {"op": "add", "alpha": 1})
        else:
            (y,) = net.add_layer("unary", [y], [([2, 16, 5, 5], torch.float32)], {"op": op})
    net.outputs.append(y.name)
    for _ in range(residual_reader_count - 1):  # another reader of r is fine; another reader of an intermediate is not
        net.add_layer("unary", [r], [([2, 16, 5, 5], torch.float32)], {"op": "neg"})
    values = {"x": torch.randn(2, 8, 5, 5), "r": torch.randn(2, 16, 5, 5), **net.constants}
    return net, values


def run_reference(net: Network, values: dict) -> torch.Tensor:
    env = dict(values)
    for layer in net.layers:
        (ref,) = [t for t in tactics_for(layer, CPU) if t.name == REFERENCE]
        out = ref.fn(layer, [env.get(n) if n is not None else None for n in layer.inputs], RunContext({}))
        env[layer.outputs[0]] = out
    return env[net.outputs[0]]


@pytest.mark.parametrize(
    "ops,activation,residual",
    [
        (["silu"], "silu", False),
        (["hardswish"], "hardswish", False),
        (["sigmoid"], "sigmoid", False),
        (["relu6"], "relu6", False),
        (["relu"], "relu", False),
        (["add", "relu"], "relu", True),
        (["add"], None, True),
    ],
)
def test_chain_becomes_one_layer_with_the_same_values(ops, activation, residual):
    net, values = chain(ops)
    expected = run_reference(net, values)
    fused = fuse_conv_epilogues(net, CUDA_SETTINGS)
    (layer,) = [layer for layer in fused.layers if layer.kind != "unary" or layer.attrs["op"] != "neg"]
    assert layer.kind == "conv_epilogue"
    assert (layer.attrs["activation"], layer.attrs["residual"]) == (activation, residual)
    assert layer.outputs == fused.outputs
    assert relative_error(run_reference(fused, values), expected) < 1e-6


def test_add_then_any_vocabulary_activation_fuses_with_its_attributes():
    net, values = chain(["add", "silu"])
    expected = run_reference(net, values)
    fused = fuse_conv_epilogues(net, CUDA_SETTINGS)
    assert [layer.kind for layer in fused.layers] == ["conv_epilogue"]
    assert (fused.layers[0].attrs["activation"], fused.layers[0].attrs["residual"]) == ("silu", True)
    assert relative_error(run_reference(fused, values), expected) < 1e-6

    net, values = chain(["add"])
    y = net.layers[-1].outputs[0]
    (out,) = net.add_layer("unary", [net.tensors[y]], [([2, 16, 5, 5], torch.float32)], {"op": "leaky_relu", "alpha": 0.3})
    net.outputs = [out.name]
    expected = run_reference(net, values)
    fused = fuse_conv_epilogues(net, CUDA_SETTINGS)
    assert [layer.kind for layer in fused.layers] == ["conv_epilogue"]
    assert fused.layers[0].attrs["activation_attrs"] == {"alpha": 0.3}
    assert relative_error(run_reference(fused, values), expected) < 1e-6


def test_an_activation_kept_in_fp32_is_not_fused():
    net, _ = chain(["exp"])
    fused = fuse_conv_epilogues(net, CUDA_SETTINGS)
    assert [layer.kind for layer in fused.layers] == ["conv", "unary"]


def test_an_intermediate_with_another_reader_is_not_fused():
    net, _ = chain(["silu"])
    conv_out = net.layers[0].outputs[0]
    net.add_layer("unary", [net.tensors[conv_out]], [([2, 16, 5, 5], torch.float32)], {"op": "neg"})
    fused = fuse_conv_epilogues(net, CUDA_SETTINGS)
    assert [layer.kind for layer in fused.layers] == ["conv", "unary", "unary"]


def test_no_fusion_for_cpu_engines():
    net, _ = chain(["silu"])
    fused = fuse_conv_epilogues(net, SimpleNamespace(settings=SimpleNamespace(device=torch.device("cpu"))))
    assert [layer.kind for layer in fused.layers] == ["conv", "unary"]


def test_a_residual_made_after_the_conv_is_not_fused():
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [2, 8, 5, 5], torch.float32)
    r = net.add_input("r", [2, 16, 5, 5], torch.float32)
    w = net.add_constant("w", torch.randn(16, 8, 1, 1))
    b = net.add_constant("b", torch.randn(16))
    (y,) = net.add_layer("conv", [x, w, b], [([2, 16, 5, 5], torch.float32)], dict(CONV))
    (later,) = net.add_layer("unary", [r], [([2, 16, 5, 5], torch.float32)], {"op": "neg"})
    (z,) = net.add_layer("binary", [y, later], [([2, 16, 5, 5], torch.float32)], {"op": "add", "alpha": 1})
    net.outputs.append(z.name)
    fused = fuse_conv_epilogues(net, CUDA_SETTINGS)
    assert [layer.kind for layer in fused.layers] == ["conv", "unary", "binary"]
