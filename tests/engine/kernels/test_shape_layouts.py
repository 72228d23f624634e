"""Data-movement references keep their input's memory format (an NHWC split stays NHWC), and their values."""

import torch

from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.tensor import Layout, TensorDesc
from kiln.engine.kernels.registry import RunContext, get_tactic
from kiln.engine.optimize.layout import mark_channels_last


def test_split_of_an_nhwc_tensor_gives_nhwc_parts_with_its_values():
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=torch.channels_last)
    layer = Layer("split", "s", ["x"], ["a", "b"], {"sizes": [3, 5], "dim": 1})
    parts = get_tactic("split", "reference").fn(layer, [x], RunContext({}))
    for part, want in zip(parts, torch.split(x, [3, 5], 1)):
        assert part.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(part, want)
    nchw = get_tactic("split", "reference").fn(layer, [x.contiguous()], RunContext({}))
    assert all(p.is_contiguous() for p in nchw)


def test_split_and_concat_between_convs_stay_channels_last():
    half = torch.float16
    t = {n: TensorDesc(n, [2, c, 4, 4], half) for n, c in [("x", 8), ("y", 8), ("a", 3), ("b", 5), ("j", 8), ("z", 8)]}
    t["w"] = TensorDesc("w", [8, 8, 1, 1], half)
    conv = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1, "transposed": False}
    layers = [
        Layer("conv", "c1", ["x", "w", None], ["y"], conv),
        Layer("split", "s", ["y"], ["a", "b"], {"sizes": [3, 5], "dim": 1}),
        Layer("concat", "j", ["b", "a"], ["j"], {"dim": 1}),
        Layer("conv", "c2", ["j", "w", None], ["z"], conv),
    ]
    network = Network(inputs=["x"], outputs=["z"], tensors=t, layers=layers, constants={"w": torch.zeros(8, 8, 1, 1, dtype=half)})
    mark_channels_last(network)
    assert all(network.tensors[n].layout == Layout.CHANNELS_LAST for n in ("y", "a", "b", "j", "z"))


def test_a_group_norm_between_convs_keeps_nhwc_and_a_last_dim_layer_norm_does_not():
    half = torch.float16
    t = {n: TensorDesc(n, [2, 8, 4, 4], half) for n in ("x", "y", "g", "p", "l")}
    t["w"] = TensorDesc("w", [8, 8, 1, 1], half)
    conv = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1, "transposed": False}
    layers = [
        Layer("conv", "c1", ["x", "w", None], ["y"], conv),
        Layer("norm", "gn", ["y", None, None, None, None], ["g"], {"type": "group", "groups": 1, "eps": 1e-5}),
        Layer("pool", "p", ["g"], ["p"], {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1]}),
        Layer("norm", "ln", ["y", None, None, None, None], ["l"], {"type": "layer", "shape": [4], "eps": 1e-5}),
    ]
    network = Network(inputs=["x"], outputs=["p", "l"], tensors=t, layers=layers, constants={"w": torch.zeros(8, 8, 1, 1, dtype=half)})
    mark_channels_last(network)
    assert [network.tensors[n].layout for n in ("y", "g", "p")] == [Layout.CHANNELS_LAST] * 3
    assert network.tensors["l"].layout != Layout.CHANNELS_LAST
