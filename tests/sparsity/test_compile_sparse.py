"""kiln.compile(sparse_weights=True) on the CPU: which layers are marked, the report, the no-2:4 warning,
and a plan that chose the sparse tactic still answering right (densely, with a warning) after a save and a load."""

import warnings

import pytest
import torch
from torch import nn

import kiln
from kiln.engine.builder.build import PreparedWeights
from kiln.engine.kernels import sparse_gemm
from kiln.engine.kernels.registry import get_tactic
from kiln.engine.module import EngineModule
from kiln.engine.optimize.sparse_weights import SPARSE_ATTR
from kiln.engine.plan import Step
from kiln.report.partition_report import PartitionReport
from kiln.report.sparsity import NO_2TO4_WARNING
from kiln.sparsity import prune_2to4
from tests.helpers import assert_outputs_match, plan_steps


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 60), nn.ReLU(), nn.Linear(60, 32)).eval()


class ConstantMatmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 32))
        self.pw = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        y = x @ self.w  # [B, 4, 4, 64] @ [64, 32]
        return self.pw(y.permute(0, 3, 1, 2)).relu()


def _compile(model, x, **kw):
    return kiln.compile(model, inputs=[x], enabled_precisions={torch.half}, min_block_size=1, sparse_weights=True, **kw)


def _rows(compiled):
    return {row[0]: row for rows in compiled.report.sparsity.values() for row in rows}


def test_pruned_mlp_marks_each_gemm_and_matches_eager():
    model = _mlp()
    prune_2to4(model, exclude=["4"])
    x = torch.randn(2, 8, 64)
    compiled = _compile(model, x)
    assert_outputs_match(compiled(x).float(), model(x), rtol=1e-2)
    rows = _rows(compiled)
    assert [rows[n][3] for n in ("linear", "linear_1", "linear_2")] == ["yes", "yes", "no"]
    assert rows["linear"][2] == "128x64" and rows["linear"][4] == "dense" and "not a CUDA build" in rows["linear"][7]
    assert "outputs 60 not a multiple of 16" in rows["linear_1"][7]
    assert "not 2:4" in rows["linear_2"][7]
    assert not compiled.report.warnings
    assert "2:4 sparsity, 0 of 3 GEMM-like layers sparse" in compiled.report.table()


def test_matmul_with_constant_weight_and_pointwise_conv_are_marked():
    model = ConstantMatmul().eval()
    with torch.no_grad():
        model.w.copy_((model.w.t() * torch.tensor([1.0, 1, 0, 0]).repeat(16)).t())  # 2:4 along K (rows of w)
    prune_2to4(model)
    x = torch.randn(2, 4, 4, 64)
    compiled = _compile(model, x)
    assert_outputs_match(compiled(x).float(), model(x), rtol=1e-2)
    kinds = {row[1]: row for row in _rows(compiled).values()}
    assert kinds["matmul"][2] == "32x64" and kinds["matmul"][3] == "yes"
    assert kinds["conv"][2] == "16x32" and kinds["conv"][3] == "yes"


def test_no_2to4_layer_is_a_warning_not_an_error():
    model = _mlp()
    x = torch.randn(2, 8, 64)
    with pytest.warns(UserWarning, match="no linear / matmul / 1x1-conv layer has a 2:4 weight"):
        compiled = _compile(model, x)
    assert compiled.report.warnings == [NO_2TO4_WARNING]
    assert f"warning: {NO_2TO4_WARNING}" in compiled.report.table()
    assert_outputs_match(compiled(x).float(), model(x), rtol=1e-2)


def test_without_sparse_weights_nothing_is_marked():
    model = _mlp()
    prune_2to4(model)
    x = torch.randn(2, 8, 64)
    compiled = kiln.compile(model, inputs=[x], enabled_precisions={torch.half}, min_block_size=1)
    assert not compiled.report.sparsity
    assert not any(SPARSE_ATTR in s.layer.attrs for s in plan_steps(compiled))


def test_report_rows_and_warnings_survive_json():
    model = _mlp()
    prune_2to4(model)
    x = torch.randn(2, 8, 64)
    report = _compile(model, x).report
    again = PartitionReport.from_json(report.to_json())
    assert again.sparsity == report.sparsity and again.warnings == report.warnings


def _as_if_built_sparse(compiled):
    """Rewrite each engine's plan as a sparse GPU's build would leave it: qualifying layers on the 2:4 tactic."""
    for name, engine in compiled.engine_blocks.items():
        plan = engine.plan
        weights = PreparedWeights(dict(plan.weights), plan.tensors)
        for i, step in enumerate(plan.steps):
            info = step.layer.attrs.get(SPARSE_ATTR)
            if info is not None and info["reason"] is None:
                info["alg_id"] = 0
                tactic = get_tactic(step.layer.kind, sparse_gemm.NAME)
                plan.steps[i] = Step(weights.apply(step.layer, tactic), tactic.name)
        used = {n for s in plan.steps for n in s.layer.inputs if n is not None}
        plan.weights = {n: w for n, w in weights.values.items() if n in used}
        setattr(compiled.graph_module, name, EngineModule(plan, name))
    return compiled


def test_a_plan_that_chose_the_sparse_tactic_answers_densely_where_it_cannot_run(monkeypatch):
    model = _mlp()
    prune_2to4(model)
    x = torch.randn(2, 8, 64)
    compiled = _as_if_built_sparse(_compile(model, x))
    tactics = [s.tactic for s in plan_steps(compiled)]
    assert tactics.count(sparse_gemm.NAME) == 1  # only the first linear qualifies (128x64)
    monkeypatch.setattr(sparse_gemm, "_warned", set())
    with pytest.warns(UserWarning, match="has no sparse tensor cores"):
        out = compiled(x)
    assert_outputs_match(out.float(), model(x), rtol=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(x)  # warned once per layer, not per call


@pytest.mark.parametrize("built_for", ["cpu", "cuda:0"])
def test_a_saved_sparse_plan_loads_on_the_cpu_with_the_dense_pruned_weight(tmp_path, built_for):
    # kiln.load re-targets the plan (builder/retarget.py): the 2:4 tactic cannot run on the CPU, so the
    # layer gets the reference tactic and the dense pruned weight the tactic's unprepare rebuilds.
    model = _mlp()
    prune_2to4(model)
    x = torch.randn(2, 8, 64)
    compiled = _as_if_built_sparse(_compile(model, x))
    for engine in compiled.engine_blocks.values():
        engine.plan.device = built_for
    path = tmp_path / "sparse.kiln"
    kiln.save(compiled, path)
    with pytest.warns(kiln.KilnWarning, match="cusparselt_2to4 -> reference"):
        loaded = kiln.load(path, device="cpu")
    assert sparse_gemm.NAME not in [s.tactic for e in loaded.engine_blocks.values() for s in e.plan.steps]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing left to fall back at call time
        out = loaded(x)
    assert_outputs_match(out.float(), model(x), rtol=1e-2)
