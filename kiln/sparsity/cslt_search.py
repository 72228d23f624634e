"""cuSPARSELt's algorithm choice, made in a child process so that a failing configuration cannot break the build.

The 2:4 tactic (kiln/engine/kernels/sparse_gemm.py) runs
`torch._cslt_sparse_mm(W_c, x^T, bias, transpose_result=True, alg_id)` with the algorithm
cuSPARSELt's own search picks (at BERT-large shapes the searched one gained 1.21-1.48x over
dense against 1.07-1.29x for the default one, issue 14). But with torch 2.11+cu130 and
cuSPARSELt 0.8.0 on the H100, the search with a bias *and* a transposed result fails for FP16
("internal error when calling cusparseLtMatmulSearch"), and the CUDA context is then poisoned:
every later CUDA call of the process fails with "illegal instruction". Catching the exception
is no help, and which configurations fail depends on the dtype, the library and the GPU.

So the builder's process never runs a configuration it has not seen work. A child process
(this file, run as a script: it imports only torch) takes one problem at a time (the weight's
shape and dtype, the padded row count, bias or not), runs the search of an `Attempt` on random
2:4 operands of that shape, then the GEMM exactly as the tactic will run it with the algorithm
found, eagerly and replayed from a CUDA graph, checks it against dense F.linear, and answers
with the algorithm. A configuration that fails kills only the child; the parent starts another
and tries the next attempt (`attempts()`, the one place to change the order). Only an
(algorithm, configuration) pair that ran right in the child is ever run by the builder. The
child exits when its parent closes the pipe or after IDLE_S seconds without a problem; the
answers are cached per problem for the life of the process, and the layer's attrs keep them,
so a saved plan runs without searching again.

A problem with `"transpose_result": False` is the sparse MLP chain's GEMM (kernels/sparse_mlp.py):
the result stays [outputs, rows] row-major, never transposed, and the dense operand is either the
rows seen transposed (a free column-major view, `"dense_row_major": False`) or the previous GEMM's
[reduction, rows] result as it is (`True`). cuSPARSELt plans the two operand layouts differently,
so each is searched as it will run. Such a GEMM takes no bias: the chain adds it in the generated
pass it runs over the result anyway (the FP16 search with a bias is what fails, above).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass

# The child leaves after this long without a problem (it holds a CUDA context and its cached memory).
IDLE_S = 60.0
# A search or a validation that has not answered by then is taken as failed (the child is stopped).
ANSWER_S = 180.0
# Same FP16/BF16 operands, FP32 accumulation both ways: only summation order and output rounding differ.
TOLERANCE = {"float16": 5e-3, "bfloat16": 2e-2}


@dataclass(frozen=True)
class Attempt:
    """How one try chooses the algorithm, and how the GEMM then runs (transpose_result as the problem says: True unless given)."""

    search: bool  # cuSPARSELt's search picks the algorithm; else the default one (id 0)
    search_bias: bool  # the search sees the layer's bias (only where it has one)
    search_transpose: bool  # the search writes the result transposed, as the GEMM will
    fused_bias: bool  # the GEMM adds the bias in cuSPARSELt's epilogue; else Kiln adds it right after

    @property
    def label(self) -> str:
        if not self.search:
            chosen = "default alg"
        else:
            chosen = f"searched with{'' if self.search_bias else 'out'} bias, transpose_result={self.search_transpose}"
        return f"{chosen}, bias {'fused' if self.fused_bias else 'added after'}"


def attempts(dtype: str, has_bias: bool, transpose_result: bool = True) -> list[Attempt]:
    """The configurations tried, in order, for one GEMM; the first whose run is right in the child is used.

    The search with a bias and transpose_result=True (exactly the GEMM's configuration) fails
    for FP16 on the H100 with cuSPARSELt 0.8.0 and works for BF16 (measured). Searching the same
    configuration without the bias is the next best: the algorithm is timed on the GEMM that
    runs, and the child then checks it with the bias fused. The default algorithm is the last
    resort; it worked at every shape and dtype measured. benchmarks/sparse_probe.py measures
    these choices: change this list after running it.

    The untransposed GEMM of the MLP chain has no bias; its search (FP16, H100, cuSPARSELt 0.8.0)
    ran at every shape the probe tried (docs/benchmarks/2026-11-25-h100-session2/sparse-probe)."""
    if not transpose_result:
        return [Attempt(True, False, False, False), Attempt(False, False, False, False)]
    if not has_bias:
        return [Attempt(True, False, True, True), Attempt(False, False, True, True)]
    exact = Attempt(True, True, True, True)
    no_bias = Attempt(True, False, True, True)
    no_bias_added_after = Attempt(True, False, True, False)
    default = Attempt(False, False, True, True)
    first = [] if dtype == "float16" else [exact]
    return [*first, no_bias, no_bias_added_after, default]


# ---------------------------------------------------------------------------------------------
# The child: runs problems, one JSON line in, one JSON line out.


def _pruned(rows: int, cols: int, dtype, device):
    import torch

    w = torch.randn(rows, cols // 4, 4, device=device)
    keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, w.abs().topk(2, dim=-1).indices, True)
    return (w * keep).reshape(rows, cols).mul_(0.05).to(dtype)


def search_algorithm(compressed, rows_t, bias, transpose: bool) -> int:
    """cuSPARSELt's search: torch._C._cusparselt.mm_search where this torch has it, else the deprecated aten op."""
    import torch

    search = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
    if search is not None:
        try:
            # pybind positional arguments: compressed_A, dense_B, bias, alpha, out_dtype, transpose_result.
            return int(search(compressed, rows_t, bias, None, None, transpose)[0])
        except TypeError:
            pass  # a binding with other arguments than the ones above: the aten op below has a schema
    return int(torch._cslt_sparse_mm_search(compressed, rows_t, bias, transpose_result=transpose))


def gemm(compressed, rows_t, bias, alg_id: int, fused_bias: bool, transpose_result: bool = True):
    """The tactic's GEMM: [M, N] = (W_c @ rows_t)^T, with the bias fused or added after; [N, M] = W_c @ rows_t untransposed."""
    import torch

    keywords = {"transpose_result": transpose_result}
    if "alg_id" in {a.name for a in torch.ops.aten._cslt_sparse_mm.default._schema.arguments}:
        keywords["alg_id"] = alg_id
    out = torch._cslt_sparse_mm(compressed, rows_t, bias=bias if fused_bias else None, **keywords)
    if bias is not None and not fused_bias:
        out.add_(bias if transpose_result else bias[:, None])
    return out


def run_request(request: dict) -> dict:
    """One problem under one attempt: the algorithm, checked by running the GEMM as the tactic will."""
    import torch
    import torch.nn.functional as F

    problem, attempt = request["problem"], Attempt(**request["attempt"])
    device = torch.device(problem["device"])
    dtype = getattr(torch, problem["dtype"])
    rows, cols, m = problem["rows"], problem["cols"], problem["m"]
    torch.manual_seed(0)
    w = _pruned(rows, cols, dtype, device)
    x = torch.randn(m, cols, device=device, dtype=dtype)
    bias = torch.randn(rows, device=device, dtype=dtype) if problem["bias"] else None
    compressed = torch._cslt_compress(w)
    transpose = problem.get("transpose_result", True)
    # The operand as the GEMM will get it: x's rows transposed as a view, or a row-major [cols, m] matrix.
    rows_t = x.t().contiguous() if problem.get("dense_row_major", False) else x.t()
    alg = 0
    if attempt.search:
        alg = search_algorithm(compressed, rows_t, bias if attempt.search_bias else None, attempt.search_transpose)
    ref = F.linear(x.float(), w.float(), bias.float() if bias is not None else None)
    if not transpose:
        ref = ref.t()

    def gemm_as_run():
        return gemm(compressed, rows_t, bias, alg, attempt.fused_bias, transpose)

    outs = [gemm_as_run()]
    if device.type == "cuda":  # the runtime replays CUDA graphs: check the pick there too
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            gemm_as_run()
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.cuda.graph(graph):
            captured = gemm_as_run()
        graph.replay()
        torch.cuda.synchronize(device)
        outs.append(captured)
    errors = [float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)) for out in outs]
    ok = all(err < TOLERANCE[problem["dtype"]] for err in errors) and all(out.shape == ref.shape for out in outs)
    return {"ok": ok, "alg_id": alg, "rel_err": max(errors), "error": None if ok else f"wrong result (relative error {max(errors):.2e})"}


def _child_main() -> int:
    import torch

    stdin = sys.stdin
    while True:
        ready, _, _ = select.select([stdin], [], [], IDLE_S)
        if not ready:
            return 0
        line = stdin.readline()
        if not line:
            return 0  # the parent closed the pipe
        request = json.loads(line)
        try:
            reply = run_request(request)
        except Exception as exc:  # noqa: BLE001 -- the answer is the failure; the parent tries the next attempt
            reply = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"}
            print(json.dumps(reply), flush=True)
            return 1  # a failed cuSPARSELt call may have poisoned this context: never run another problem in it
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next problem, or the parent's build, gets the memory back
        print(json.dumps(reply), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: one child at a time, restarted after a failure.


class Worker:
    """A child process answering requests; `ask` returns None when it died or hung without an answer."""

    def __init__(self, command: list[str] | None = None, answer_s: float = ANSWER_S):
        # -P: the script's folder (kiln/sparsity) is not put on sys.path, so its modules cannot shadow others.
        self.command = command or [sys.executable, "-P", os.path.abspath(__file__)]
        self.answer_s = answer_s
        self.proc: subprocess.Popen | None = None
        self.stderr = None
        self.lock = threading.Lock()
        self.last_stderr = ""

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self._stop()
            # A file, not a pipe: a chatty child (warnings) must never block on a full pipe nobody reads.
            self.stderr = tempfile.TemporaryFile("w+")
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1
            )
        return self.proc

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                pass
        if self.stderr is not None:
            self.stderr.seek(0)
            self.last_stderr = self.stderr.read()[-2000:]
            self.stderr.close()
            self.stderr = None

    def ask(self, request: dict) -> dict | None:
        with self.lock:
            for _ in range(2):  # a child that has just left for idleness gets one fresh start
                proc = self._start()
                try:
                    proc.stdin.write(json.dumps(request) + "\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    self._stop()
                    continue
                ready, _, _ = select.select([proc.stdout], [], [], self.answer_s)
                line = proc.stdout.readline() if ready else ""
                if line:
                    reply = json.loads(line)
                    if not reply.get("ok") and proc.poll() is None and reply.get("error", "").startswith("wrong result"):
                        return reply  # the child is still sound: a wrong answer is not a broken context
                    if not reply.get("ok"):
                        self._stop()
                    return reply
                try:
                    idle_exit = ready and proc.wait(timeout=10) == 0
                except subprocess.TimeoutExpired:
                    idle_exit = False
                self._stop()
                if not idle_exit:
                    return None
            return None

    def close(self) -> None:
        with self.lock:
            self._stop()


WORKER = Worker()
_cache: dict[tuple, dict] = {}
_cache_lock = threading.Lock()


def ask(request: dict) -> dict | None:
    """One request to the child process (the tests replace this to run it in-process, against a fake cuSPARSELt)."""
    return WORKER.ask(request)


def choose(problem: dict) -> dict:
    """{"alg_id", "fused_bias", "attempt", "tried"} for a GEMM: the first attempt that ran right in a child process.

    `problem`: rows and cols of the [outputs, reduction] weight, `m` the padded row count,
    `dtype` ("float16"/"bfloat16"), `bias` (whether the layer has one), `device` ("cuda:0"); optionally
    `transpose_result` (default True) and `dense_row_major` (default False), as the module docstring says.
    Raises RuntimeError naming every failed attempt if none worked (the builder then skips the tactic)."""
    key = tuple(sorted(problem.items()))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    tried = []
    for attempt in attempts(problem["dtype"], problem["bias"], problem.get("transpose_result", True)):
        reply = ask({"problem": problem, "attempt": asdict(attempt)})
        if reply is not None and reply.get("ok"):
            answer = {"alg_id": int(reply["alg_id"]), "fused_bias": attempt.fused_bias, "attempt": attempt.label, "tried": tried}
            with _cache_lock:
                _cache[key] = answer
            return answer
        why = reply.get("error") if reply is not None else f"the child process died or hung ({WORKER.last_stderr.strip()[-200:]})"
        tried.append(f"{attempt.label}: {why}")
    raise RuntimeError(
        f"cuSPARSELt ran none of its configurations right for a {problem['rows']}x{problem['cols']} {problem['dtype']} weight "
        f"and {problem['m']} rows ({'; '.join(tried)}): the layer stays dense. Each was tried in a child process, so this "
        "process is unharmed; a newer cuSPARSELt (PyTorch release) may fix it."
    )


if __name__ == "__main__":
    sys.exit(_child_main())
