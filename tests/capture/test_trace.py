"""Capture's one trace gives the graph torch.export + run_decompositions gives, and falls back where it cannot."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

import kiln
from kiln.capture import trace
from kiln.capture.export import freeze
from tests.helpers import Lambda
from tests.quantize.test_explicit import FakeQuantNet

prims = torch.ops.prims


class MobileBlock(nn.Module):
    """Conv + BN + hardswish, squeeze-excite (pool, hardsigmoid), in-place residual and activation, linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.se = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        y = F.hardswish(self.bn(self.conv(x)))
        y = y * F.hardsigmoid(self.se(F.adaptive_avg_pool2d(y, 1)))
        y += x
        y = F.silu(y, inplace=True)
        return self.fc(self.drop(y.mean((2, 3))))


class Attention(nn.Module):
    """LayerNorm, GELU MLP, SDPA, softmax, a non-persistent buffer and a tensor constant; dict output, keyword input."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.register_buffer("pos", torch.randn(1, 5, 16), persistent=False)
        self.temperature = torch.tensor(0.5)

    def forward(self, x, *, mask):
        q, k, v = self.qkv(self.norm(x + self.pos)).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v) + self.mlp(x)
        return {"out": a, "probs": torch.softmax(a * mask / self.temperature, dim=-1)}


CASES = {
    "mobile_block": (MobileBlock, lambda: ((torch.randn(2, 8, 6, 6),), {}), None),
    "attention": (Attention, lambda: ((torch.randn(2, 5, 16),), {"mask": torch.randn(2, 5, 16)}), None),
    "fake_quantize": (FakeQuantNet, lambda: ((torch.randn(2, 3, 6, 6),), {}), None),
    "dynamic_batch": (MobileBlock, lambda: ((torch.randn(4, 8, 6, 6),), {}), ({0: Dim.AUTO(min=2, max=16)},)),
}


def _describe(gm: torch.fx.GraphModule) -> list[tuple]:
    """Each node as converters see it: name, op, target, arguments, and the shape/dtype it records."""
    rows = []
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else (val,)
        meta = tuple((tuple(str(d) for d in v.shape), v.dtype) if isinstance(v, torch.Tensor) else str(v) for v in vals)
        rows.append((node.name, node.op, str(node.target), str(node.args), str(node.kwargs), meta, node.meta.get("nn_module_stack")))
    return rows


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_trace_gives_the_graph_of_export_then_run_decompositions(name):
    make, inputs, dynamic_shapes = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    args, kwargs = inputs()
    with torch.no_grad():
        one = trace.export_one_trace(model, args, kwargs, dynamic_shapes)
        two = trace.export_two_traces(model, args, kwargs, dynamic_shapes)
    assert one.graph_signature.input_specs == two.graph_signature.input_specs
    assert one.graph_signature.output_specs == two.graph_signature.output_specs
    assert one.call_spec.in_spec == two.call_spec.in_spec and one.call_spec.out_spec == two.call_spec.out_spec
    assert {str(k): str(v) for k, v in one.range_constraints.items()} == {str(k): str(v) for k, v in two.range_constraints.items()}
    gm_one, gm_two = freeze(one), freeze(two)
    assert _describe(gm_one) == _describe(gm_two)
    with torch.no_grad():
        for got, want in zip(gm_one(*args, *kwargs.values()), gm_two(*args, *kwargs.values())):
            assert torch.equal(got, want)


def test_an_aliasing_prim_falls_back_to_two_traces():
    """Functionalization refuses prims views in the one trace; the two-trace path rewrites them first."""
    model = Lambda(lambda x: prims.broadcast_in_dim(x, [2, 3, 4], [0, 1]) + 1)
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="alias annotations"):
        trace.export_one_trace(model, (x,), {}, None)
    program = trace.export_core_aten(model, (x,), {}, None)
    assert torch.equal(freeze(program)(x)[0], model(x))


def test_torchs_tracer_entry_is_restored_after_a_trace_and_a_failed_one():
    from torch.export import _trace

    original = _trace._export_to_aten_ir
    trace.export_one_trace(Lambda(lambda x: x.relu()), (torch.randn(2),), {}, None)
    assert _trace._export_to_aten_ir is original
    with pytest.raises(RuntimeError):
        trace.export_one_trace(Lambda(lambda x: prims.view_of(x) + 1), (torch.randn(2),), {}, None)
    assert _trace._export_to_aten_ir is original


def test_a_data_dependent_branch_still_explains_itself():
    class Branch(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1

    with pytest.raises(kiln.CaptureError, match="value inside a tensor"):
        kiln.compile(Branch().eval(), [torch.randn(3)])


def test_ranged_inputs_keep_the_two_trace_path(monkeypatch):
    """The one trace stack-traces every SymInt node under symbolic sizes, which made it slower, not faster."""

    def refuse(*args):
        raise AssertionError("the one trace was used for a ranged input")

    monkeypatch.setattr(trace, "export_one_trace", refuse)
    x = torch.randn(4, 8, 6, 6)
    with torch.no_grad():
        program = trace.export_core_aten(MobileBlock().eval(), (x,), {}, ({0: Dim.AUTO(min=2, max=16)},))
    assert not isinstance(program.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape[0], int)
