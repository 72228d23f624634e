"""benchmarks/dynamic.py on the CPU: the script runs end to end, its engines match eager, it keeps no CPU timings."""

import json

from benchmarks import dynamic


def test_smoke_run_matches_eager_and_records_no_timings(tmp_path):
    assert dynamic.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert not [r for r in rows if "error" in r], rows
    variants = {(r["case"], r["variant"]) for r in rows}
    assert {("tiny_cnn", "ranged"), ("tiny_cnn", "static"), ("tiny_encoder", "ranged"), ("tiny_encoder", "static")} <= variants
    assert ("backend tiny_cnn", "torch.compile(backend=kiln)") in variants
    assert all(r["rel_err_vs_eager"] < 1e-4 for r in rows)
    assert not any(key in r for r in rows for key in ("median_ms", "first_call_ms", "build_s"))
    assert "correctness only" in (tmp_path / "results.md").read_text()
