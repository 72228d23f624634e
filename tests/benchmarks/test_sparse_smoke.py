"""benchmarks/sparse.py on the CPU: the script runs end to end, its engines match eager, it keeps no CPU timings."""

import json

from benchmarks import sparse


def test_smoke_run_matches_eager_marks_the_pruned_gemms_and_records_no_timings(tmp_path):
    assert sparse.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert not [r for r in rows if "error" in r], rows
    assert {(r["case"], r["mode"]) for r in rows} == {
        (case, mode) for case in ("ffn_gemms", "bert_large_encoder") for mode in ("kiln-dense", "kiln-sparse")
    }
    assert all(r["rel_err_vs_eager"] < 1e-2 for r in rows)
    marked = {r["case"]: (r["gemm_layers"], r["pattern"]) for r in rows if r["mode"] == "kiln-sparse"}
    assert marked == {"ffn_gemms": (2, 2), "bert_large_encoder": (4, 4)}  # every pruned linear found 2:4
    assert not any(key in r for r in rows for key in ("median_ms", "p90_ms"))
    assert "correctness only" in (tmp_path / "results.md").read_text()


def test_ffn_pairs_are_summed_from_the_builders_candidate_times():
    from benchmarks.sparse import ffn_times

    layers = {
        "up+down": {"kind": "sparse_mlp", "chosen": "cusparselt_2to4_chain", "ms": {"cusparselt_2to4_chain": 0.3, "dense_aten_addmm": 0.4}},
        "up_1+down_1": {"kind": "sparse_mlp", "chosen": "dense_aten_addmm", "ms": {"cusparselt_2to4_chain": 0.5, "dense_aten_addmm": 0.4}},
        "qkv": {"kind": "linear", "chosen": "aten_addmm", "ms": {"cusparselt_2to4": 0.1, "aten_addmm": 0.2}},
    }
    assert ffn_times(layers) == {"pairs": 2, "dense_ms": 0.8, "sparse_ms": 0.8, "ratio": 1.0, "chose_sparse": 1}
    assert ffn_times({"qkv": layers["qkv"]}) is None
