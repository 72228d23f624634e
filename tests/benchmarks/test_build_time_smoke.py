"""benchmarks/build_time.py's stage table (no build: the rows are what a GPU run would write)."""

from benchmarks import build_time


def test_the_stage_table_has_a_row_per_build_and_a_column_per_stage_seen():
    rows = [
        {"model": "a", "batch": 1, "cold_s": 9.0, "warm_s": 3.0,
         "cold_stages": {"capture": 2.0, "precompile": 6.0, "first call": 0.5}, "warm_stages": {"capture": 2.0, "first call": 0.4}},
        {"model": "b", "batch": 1, "error": "failed"},
    ]  # fmt: skip
    lines = build_time.stage_table(rows)
    assert lines[0] == "| model | build | s | capture | precompile | first call |"
    assert lines[2] == "| a | cold | 9.0 | 2.00 | 6.00 | 0.50 |"
    assert lines[3] == "| a | warm | 3.0 | 2.00 |  | 0.40 |"
    assert len(lines) == 4
