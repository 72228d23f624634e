import pytest
import torch

from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda, check_against_eager

CASTS = {
    "float_from_half": (lambda x: x.float(), torch.float16),
    "half": (lambda x: x.half(), torch.float32),
    "bfloat16": (lambda x: x.to(torch.bfloat16), torch.float32),
    "to_int32": (lambda x: x.to(torch.int32), torch.float32),
    "to_int64": (lambda x: x.long(), torch.float32),
    "to_int8": (lambda x: x.to(torch.int8), torch.float32),
    "to_uint8": (lambda x: x.abs().to(torch.uint8), torch.float32),
    "to_bool": (lambda x: x.bool(), torch.float32),
    "bool_to_long": (lambda x: (x > 0).long(), torch.float32),
    "bool_to_float": (lambda x: (x > 0).float(), torch.float32),
    "int_to_float": (lambda x: x.float() / 3, torch.int64),
    "int_to_int": (lambda x: x.to(torch.int32), torch.int64),
    "type_as": (lambda x: x.type_as(torch.zeros(1, dtype=torch.int32)), torch.float32),
    "double_truncated": (lambda x: (x.double() * 2).float(), torch.float32),
}


@pytest.mark.parametrize("name", sorted(CASTS))
def test_cast_matches_eager(name):
    fn, dtype = CASTS[name]
    x = (torch.randn(3, 4, 5) * 7).to(dtype)
    compiled = check_against_eager(Lambda(fn), x)
    assert "cast" in layer_kinds(compiled)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last, torch.preserve_format])
def test_clone_matches_eager(memory_format):
    x = torch.randn(2, 3, 4, 5)
    check_against_eager(Lambda(lambda x: x.clone(memory_format=memory_format) * 2), x)


def test_clone_converts_to_copy():
    from kiln.engine.convert import convert_graph

    # The lowering removes clones before conversion; a graph built by hand still has one.
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    y = graph.call_function(torch.ops.aten.clone.default, (x,), {"memory_format": torch.channels_last})
    graph.output((y,))
    x.meta["val"] = y.meta["val"] = torch.randn(1, 2, 3, 4)
    network = convert_graph(torch.fx.GraphModule(torch.nn.Module(), graph))
    assert [layer.kind for layer in network.layers] == ["copy"]
