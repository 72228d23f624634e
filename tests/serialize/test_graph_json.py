"""FX graph <-> JSON: every argument kind an aten graph uses survives; nothing else gets in."""

import math
import operator

import pytest
import torch

import kiln
from kiln.serialize.graph_json import decode_arg, encode_arg, graph_from_json, graph_to_json, resolve_target, target_name


def _round(value):
    from kiln.serialize.graph_json import _DecodeContext

    return decode_arg(encode_arg(value, "test"), _DecodeContext(None))


@pytest.mark.parametrize(
    "value",
    [
        1,
        -3,
        2.5,
        True,
        False,
        None,
        "mean",
        [1, 2],
        (1, (2, 3.0)),
        {"a": [1, None]},
        torch.float16,
        torch.bool,
        torch.device("cpu"),
        torch.channels_last,
        torch.strided,
    ],
)
def test_argument_round_trip(value):
    out = _round(value)
    assert out == value and type(out) is type(value)


def test_non_finite_floats_round_trip():
    assert _round(float("inf")) == math.inf
    assert _round(float("-inf")) == -math.inf
    assert math.isnan(_round(float("nan")))


def test_unsupported_argument_names_the_node():
    with pytest.raises(kiln.KilnError, match="node n1.*slice"):
        encode_arg(slice(1, 2), "node n1")


def test_targets():
    assert resolve_target(target_name(torch.ops.aten.add.Tensor)) is torch.ops.aten.add.Tensor
    assert resolve_target(target_name(torch.ops.aten._to_copy.default)) is torch.ops.aten._to_copy.default
    assert resolve_target("operator.getitem") is operator.getitem
    assert resolve_target(target_name(operator.floordiv)) is operator.floordiv  # size arithmetic of dynamic dims
    bad_targets = ["operator.call", "operator.attrgetter", "builtins.eval", "aten.add", "aten.add.Tensor.x", "aten.__dict__.x", 5]
    for bad in bad_targets + ["torch.nn.functional"]:
        with pytest.raises(kiln.CorruptFileError):
            resolve_target(bad)


def test_whole_graph_round_trip():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    c = graph.get_attr("w")
    y = graph.call_function(torch.ops.aten.add.Tensor, (x, c), {"alpha": 2})
    z = graph.call_function(torch.ops.aten.clamp.default, (y,), {"min": -math.inf, "max": 1.0})
    t = graph.call_function(torch.ops.aten._to_copy.default, (z,), {"dtype": torch.float16, "device": torch.device("cpu")})
    graph.output((t, z))
    gm = torch.fx.GraphModule({"w": torch.ones(3)}, graph)
    rebuilt = graph_from_json(graph_to_json(gm, set()), set(), {"w"})
    assert str(rebuilt) == str(graph)
    out = torch.fx.GraphModule({"w": torch.ones(3)}, rebuilt)(torch.arange(3.0))
    ref = gm(torch.arange(3.0))
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_forward_reference_is_refused():
    nodes = [
        {"op": "placeholder", "name": "x", "target": "x", "args": [], "kwargs": {}},
        {"op": "call_function", "name": "y", "target": "aten.relu.default", "args": [{"node": "z"}], "kwargs": {}},
        {"op": "output", "name": "output", "args": [{"tuple": [{"node": "y"}]}], "kwargs": {}},
    ]
    with pytest.raises(kiln.CorruptFileError, match="before defining"):
        graph_from_json(nodes, set(), set())


def test_get_attr_must_name_a_constant_of_the_file():
    nodes = [{"op": "get_attr", "name": "w", "target": "__class__", "args": [], "kwargs": {}}]
    with pytest.raises(kiln.CorruptFileError, match="constant"):
        graph_from_json(nodes, set(), set())
