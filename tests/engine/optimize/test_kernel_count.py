"""Kernels per forward before and after fusion (optimize/kernel_count.py): the counts a CUDA build carries on its
plan, their place in .kiln files and in the report, and the fused-group column of the per-layer profile."""

import json

import pytest
import torch

import kiln
from kiln.engine.optimize import PASS_ORDER
from kiln.engine.plan import Plan
from kiln.engine.runtime.profiler import LayerTime, Profile
from kiln.report import PartitionReport
from kiln.report.fused_groups import fused_group
from tests.helpers import optimized_for_cuda

# Every pass that merges or removes layers, and mark_views (a view launches nothing): without them the plan has one
# step per layer that launches work before fusion.
FUSING_PASSES = [name for name in PASS_ORDER if name.startswith("fuse_")] + ["compose_gathers", "sink_views", "mark_views"]


class ResidualBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


class MLP(torch.nn.Module):
    def __init__(self, permute: bool = False):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
        self.permute = permute

    def forward(self, x):
        if self.permute:  # a permute read only by a linear: mark_views makes it a view, which launches nothing
            x = x.permute(0, 2, 1)
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def built(model, x, without=()):
    torch.manual_seed(0)
    return optimized_for_cuda(model.eval(), [x], without=without)


@pytest.mark.parametrize(
    "model, x, before, after, groups",
    [
        # cast in, conv, relu, conv, add, relu, cast out -> cast, conv+relu, conv+add+relu, cast (BN folds into the conv)
        (ResidualBlock(), torch.randn(2, 8, 6, 6), 7, 4, ["", "conv+relu", "conv+add+relu", ""]),
        # cast, linear, gelu, linear, cast -> cast, linear with a GELU epilogue, linear, cast
        (MLP(), torch.randn(4, 16), 5, 4, ["", "linear+gelu", "", ""]),
        # the permute is counted before (a copy) and not after (a view); its step stays in the plan
        (MLP(permute=True), torch.randn(2, 16, 3), 6, 4, ["", "", "linear+gelu", "", ""]),
    ],
)
def test_kernels_before_and_after_fusion(model, x, before, after, groups):
    network, plan = built(model, x)
    assert (plan.kernels_unfused, plan.kernels) == (before, after)
    assert (network.kernels_unfused, network.kernels) == (before, after)
    assert [fused_group(s.layer) for s in plan.steps] == groups
    assert plan.kernels == sum(1 for s in plan.steps if not s.layer.attrs.get("view_ok"))


def test_unfused_count_is_the_plan_without_fusions():
    """A model with fused reductions, a GEMM epilogue and views: before fusion is the step count of a plan built without
    the fusing passes, after is the fused plan's steps less its views, and fusion removed kernels."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.fc = torch.nn.LayerNorm(16), torch.nn.Linear(16, 16)

        def forward(self, x):
            y = self.fc(self.norm(x).permute(0, 2, 1).permute(0, 2, 1))
            return torch.softmax(y * 0.5, -1) * torch.sigmoid(x) + x.exp()

    x = torch.randn(2, 4, 16)
    _, fused = built(Block(), x)
    _, unfused = built(Block(), x, without=FUSING_PASSES)
    assert fused.kernels_unfused == unfused.kernels_unfused == unfused.kernels == len(unfused.steps)
    views = sum(1 for s in fused.steps if s.layer.attrs.get("view_ok"))
    assert views == 2
    assert fused.kernels == len(fused.steps) - views < fused.kernels_unfused
    assert {s.layer.kind for s in fused.steps if fused_group(s.layer)} == {"fused_reduction", "linear"}
    assert "softmax" in [fused_group(s.layer) for s in fused.steps if s.layer.kind == "fused_reduction"][-1].split("+")


def test_plan_json_keeps_the_counts_and_loads_plans_without_them():
    _, plan = built(MLP(), torch.randn(4, 16))
    data = json.loads(json.dumps(plan.to_json()))
    loaded = Plan.from_json(data, plan.weights)
    assert (loaded.kernels_unfused, loaded.kernels) == (5, 4)
    del data["kernels_unfused"], data["kernels"]  # a .kiln file written before the counts existed
    old = Plan.from_json(data, plan.weights)
    assert (old.kernels_unfused, old.kernels) == (None, None)


def test_report_shows_kernels_per_engine_block():
    _, plan = built(ResidualBlock(), torch.randn(2, 8, 6, 6))
    report = PartitionReport([])
    report.layers["_engine_block_0"] = [(s.layer.name, s.layer.kind, s.tactic, s.layer.source, None) for s in plan.steps]
    report.record_kernels("_engine_block_0", plan)
    assert report.kernels_per_forward() == (7, 4)
    assert "Engine kernels per forward: 7 before fusion -> 4 after." in report.summary()
    assert "_engine_block_0: 4 layers after fusion (kernels per forward: 7 -> 4" in report.table()
    again = PartitionReport.from_json(json.loads(json.dumps(report.to_json())))
    assert again.summary() == report.summary()
    # A report saved before the counts existed, or a block loaded from such a plan, says so instead of a number.
    report.kernels["_engine_block_0"] = [4, None, None]
    assert report.kernels_per_forward() is None
    assert "not counted" in report.table()
    old = report.to_json()
    del old["kernels"]
    assert PartitionReport.from_json(old).kernels == {}


def test_compiled_report_counts_a_cpu_build():
    """On the CPU no fusion pass runs: every block reports the same count before and after."""
    compiled = kiln.compile(MLP().eval(), [torch.randn(4, 16)], min_block_size=1)
    (counts,) = compiled.report.kernels.values()
    assert counts[1] == counts[2] == counts[0] == 3  # linear, gelu, linear
    assert "Engine kernels per forward: 3 before fusion -> 3 after." in compiled.report.summary()


def test_profile_table_names_the_ops_of_each_fused_layer():
    _, plan = built(ResidualBlock(), torch.randn(2, 8, 6, 6))
    rows = [LayerTime("e", s.layer.name, s.layer.kind, s.tactic, "2x8x6x6", 0.5, fused_group(s.layer)) for s in plan.steps]
    table = Profile(rows).table()
    assert "fused ops" in table
    line = next(t for t in table.splitlines() if "conv+add+relu" in t)
    assert "conv_epilogue" in line


def test_fused_group_names_members_and_cuts_long_groups():
    from kiln.engine.ir.network import Layer

    attention = Layer("attention", "a", [], [], {"fused_ops": ["matmul:", "binary:mul", "softmax:", "matmul:"]})
    assert fused_group(attention) == "matmul+mul+softmax+matmul"
    long = Layer("fused_pointwise", "p", [], [], {"fused_ops": [f"unary:op{i}" for i in range(10)]})
    assert fused_group(long) == "+".join(f"op{i}" for i in range(8)) + " +2 more"
    scaled = Layer("conv", "c", [], [], {"scaled_input": True})
    assert fused_group(scaled) == "mul+conv"
    assert fused_group(Layer("conv", "c", [], [], {})) == ""  # nothing fused: the column stays empty
