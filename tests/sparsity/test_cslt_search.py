"""cuSPARSELt's algorithm choice in a child process (kiln/sparsity/cslt_search.py), on the CPU.

The child's protocol against stand-in child scripts (answering, crashing, hanging, leaving for
idleness), the order of attempts and the fallback when one fails, the bias added after the GEMM
when the chosen attempt does not fuse it, and the linear tactic with a fused epilogue, against a
fake cuSPARSELt (tests/sparsity/test_cslt_operand.py). The real library runs in
tests/gpu/test_sparse.py and benchmarks/sparse_probe.py.
"""

import sys
import textwrap
from dataclasses import asdict

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import sparse_gemm
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, RunContext, get_tactic, tactics_for
from kiln.engine.optimize.sparse_weights import SPARSE_ATTR
from kiln.sparsity import cslt_search
from kiln.sparsity.cslt_search import Attempt, Worker, attempts
from tests.helpers import relative_error
from tests.sparsity.test_cslt_operand import _h, _mark, _pruned, fake  # noqa: F401 -- fake is a fixture

PROBLEM = {"rows": 32, "cols": 64, "m": 16, "dtype": "float16", "bias": True, "device": "cpu"}


def _script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text("import json, os, sys, time\n" + textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_a_child_answers_line_by_line_and_is_reused(tmp_path):
    worker = Worker(_script(tmp_path, """
        for line in sys.stdin:
            print(json.dumps({"ok": True, "alg_id": json.loads(line)["n"], "pid": os.getpid()}), flush=True)
    """))  # fmt: skip
    try:
        first, second = worker.ask({"n": 1}), worker.ask({"n": 2})
        assert (first["alg_id"], second["alg_id"]) == (1, 2) and first["pid"] == second["pid"]
    finally:
        worker.close()


def test_a_child_that_dies_or_hangs_is_no_answer_and_the_next_request_gets_a_fresh_one(tmp_path):
    worker = Worker(_script(tmp_path, """
        for line in sys.stdin:
            request = json.loads(line)
            if request["do"] == "crash":
                print("illegal instruction", file=sys.stderr, flush=True)
                os.abort()
            if request["do"] == "hang":
                time.sleep(60)
            print(json.dumps({"ok": True, "alg_id": 7, "pid": os.getpid()}), flush=True)
    """), answer_s=2.0)  # fmt: skip
    try:
        pid = worker.ask({"do": "answer"})["pid"]
        assert worker.ask({"do": "crash"}) is None and "illegal instruction" in worker.last_stderr
        after_crash = worker.ask({"do": "answer"})
        assert after_crash["ok"] and after_crash["pid"] != pid
        assert worker.ask({"do": "hang"}) is None
        assert worker.ask({"do": "answer"})["pid"] not in (pid, after_crash["pid"])
    finally:
        worker.close()


def test_a_child_that_left_for_idleness_is_started_again_for_the_same_request(tmp_path):
    marker = tmp_path / "started_once"
    worker = Worker(_script(tmp_path, f"""
        if not os.path.exists({str(marker)!r}):
            open({str(marker)!r}, "w").close()
            sys.exit(0)  # as after IDLE_S without a problem: the request written meanwhile is never read
        for line in sys.stdin:
            print(json.dumps({{"ok": True, "alg_id": 4}}), flush=True)
    """))  # fmt: skip
    try:
        assert worker.ask({"n": 1})["alg_id"] == 4
    finally:
        worker.close()


def test_fp16_with_a_bias_never_searches_with_the_bias_and_a_transposed_result():
    # The configuration that failed on the H100 (cuSPARSELt 0.8.0) and poisoned the CUDA context.
    exact = Attempt(search=True, search_bias=True, search_transpose=True, fused_bias=True)
    assert exact not in attempts("float16", True) and attempts("bfloat16", True)[0] == exact
    for dtype in ("float16", "bfloat16"):
        for has_bias in (False, True):
            tried = attempts(dtype, has_bias)
            assert tried[-1].search is False  # the default algorithm is the last resort
            assert all(a.search_transpose for a in tried if a.search)  # the algorithm is timed as the GEMM runs


def test_choose_takes_the_first_attempt_that_ran_right_and_caches_it(monkeypatch):
    asked = []

    def ask(request):
        asked.append(Attempt(**request["attempt"]))
        if len(asked) == 1:
            return None  # the child died
        if len(asked) == 2:
            return {"ok": False, "error": "wrong result (relative error 3.0e-01)"}
        return {"ok": True, "alg_id": 11}

    monkeypatch.setattr(cslt_search, "ask", ask)
    monkeypatch.setattr(cslt_search, "_cache", {})
    answer = cslt_search.choose(PROBLEM)
    expected = attempts("float16", True)
    assert asked == expected[:3] and answer["alg_id"] == 11 and answer["fused_bias"] == expected[2].fused_bias
    assert len(answer["tried"]) == 2 and "wrong result" in answer["tried"][1]
    assert cslt_search.choose(PROBLEM) is answer and len(asked) == 3  # one choice per problem


def test_when_nothing_runs_right_the_error_names_every_attempt_and_the_build_skips_the_tactic(monkeypatch):
    monkeypatch.setattr(cslt_search, "ask", lambda request: None)
    monkeypatch.setattr(cslt_search, "_cache", {})
    with pytest.raises(RuntimeError, match="none of its configurations") as caught:
        cslt_search.choose(PROBLEM)
    assert all(a.label in str(caught.value) for a in attempts("float16", True))


def test_an_attempt_that_adds_the_bias_after_the_gemm_gives_the_reference(fake, monkeypatch):  # noqa: F811 -- the imported fixture
    added_after = Attempt(search=True, search_bias=False, search_transpose=True, fused_bias=False)
    monkeypatch.setattr(cslt_search, "attempts", lambda dtype, has_bias, transpose_result=True: [added_after])
    biases = []

    def sparse_mm(compressed_A, dense_B, bias=None, **keywords):
        biases.append(bias)
        return fake.sparse_mm(compressed_A, dense_B, bias, **keywords)

    monkeypatch.setattr(torch, "_cslt_sparse_mm", sparse_mm)
    torch.manual_seed(0)
    x, w, b = _h(3, 10, 64), _pruned(32, 64), _h(32)
    layer = _mark(Layer("linear", "l", ["x", "w", "b"], ["y"]), w)
    sparse = get_tactic("linear", sparse_gemm.NAME)
    packed = sparse.prepare(layer, {"w": w})["w"]
    run = RunContext({})
    out = sparse.fn(layer, [x, packed, b], run)
    info = layer.attrs[SPARSE_ATTR]
    assert info["fused_bias"] is False and info["cslt_choice"] == added_after.label
    assert biases and all(bias is None for bias in biases)  # in the child and here: the GEMM without it
    expected = get_tactic("linear", REFERENCE).fn(layer, [x, w, b], run).float()
    assert out.shape == expected.shape and relative_error(out.float(), expected) < 5e-3


def _gelu_then_residual() -> Program:
    ops = (
        {"kind": "unary", "op": "gelu", "args": [0], "attrs": {"op": "gelu"}},
        {"kind": "binary", "op": "add", "args": [2, 1], "attrs": {"op": "add"}},
    )
    return Program(2, ops, (3,))


def test_the_linear_tactic_runs_a_fused_epilogue_and_is_offered_for_it(fake):  # noqa: F811 -- the imported fixture
    torch.manual_seed(0)
    x, w, b, residual = _h(2, 12, 64), _pruned(32, 64), _h(32), _h(2, 12, 32)
    layer = _mark(Layer("linear", "l", ["x", "w", "b", "r"], ["y"], {"epilogue": _gelu_then_residual().to_json()}), w)
    offered = [t.name for t in tactics_for(layer, BuildTarget(torch.device("cuda"), torch.float16))]
    assert sparse_gemm.NAME in offered  # the fake stands in for sparse tensor cores
    sparse = get_tactic("linear", sparse_gemm.NAME)
    packed = sparse.prepare(layer, {"w": w})["w"]
    run = RunContext({})
    out = sparse.fn(layer, [x, packed, b, residual], run)
    expected = get_tactic("linear", REFERENCE).fn(layer, [x.float(), w.float(), b.float(), residual.float()], run)
    assert out.shape == expected.shape and relative_error(out.float(), expected) < 5e-3


def test_the_request_the_child_gets_is_json_and_names_the_layers_problem(fake, monkeypatch):  # noqa: F811 -- the imported fixture
    requests = []
    monkeypatch.setattr(cslt_search, "ask", lambda request: requests.append(request) or cslt_search.run_request(request))
    w = _pruned(48, 64)
    layer = _mark(Layer("linear", "l", ["x", "w", None], ["y"]), w)
    sparse = get_tactic("linear", sparse_gemm.NAME)
    sparse.fn(layer, [_h(13, 64), sparse.prepare(layer, {"w": w})["w"], None], RunContext({}))
    (request,) = requests
    # 13 rows padded to 16: the child times the GEMM at the padded shape the tactic runs.
    assert request["problem"] == {"rows": 48, "cols": 64, "m": 16, "dtype": "float16", "bias": False, "device": "cpu"}
    assert request["attempt"] == asdict(attempts("float16", False)[0])
