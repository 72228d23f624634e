"""The sparsity report rows say, per GEMM-like layer, what was found, what ran and why."""

from kiln.engine.ir.network import Layer
from kiln.engine.plan import Step
from kiln.report.partition_report import PartitionReport
from kiln.report.sparsity import record_sparsity, sparsity_rows


def _step(tactic, timings, **info):
    attrs = {"sparse_2to4": {"rows": 4096, "cols": 1024, "dtype": "float16", "pattern": True, "reason": None, **info}}
    return Step(Layer("linear", f"l_{tactic}", ["x", "w", "b"], ["y"], attrs), tactic, timings)


def test_rows_name_the_choice_every_candidate_time_and_the_reason():
    steps = [
        _step("cusparselt_2to4", {"aten_addmm": 0.74, "cusparselt_2to4": 0.61, "reference": 0.9}, alg_id=3),
        _step("aten_addmm", {"aten_addmm": 0.02, "cusparselt_2to4": 0.05}, alg_id=0),
        _step("aten_addmm", {"aten_addmm": 0.02}),
        _step("reference", {}),
        _step("aten_addmm", {"aten_addmm": 0.02}, pattern=False, reason="weight is not 2:4"),
        Step(Layer("unary", "u", ["y"], ["z"], {"op": "gelu"}), "reference"),
    ]
    rows = sparsity_rows(steps)
    assert len(rows) == 5  # only the layers the sparse_weights pass looked at
    sparse, dense_faster, not_offered, cpu, not_2to4 = rows
    assert sparse[3:6] == ("yes", "sparse", "cusparselt_2to4") and sparse[7] == "fastest (cuSPARSELt alg 3)"
    assert sparse[6] == "cusparselt_2to4 0.6100, aten_addmm 0.7400, reference 0.9000"
    assert dense_faster[4] == "dense" and dense_faster[7] == "dense was faster at this shape"
    assert "not offered here" in not_offered[7]
    assert "not a CUDA build" in cpu[7]
    assert not_2to4[3] == "no" and not_2to4[7] == "weight is not 2:4"


def test_one_block_with_a_2to4_layer_means_no_warning():
    report = PartitionReport([])
    record_sparsity(report, "_engine_block_0", [_step("aten_addmm", {"aten_addmm": 0.02})])
    record_sparsity(report, None)
    assert not report.warnings
    assert "_engine_block_0: 2:4 sparsity, 0 of 1 GEMM-like layers sparse" in report.table()
