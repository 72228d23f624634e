"""Which cuSPARSELt search and run configurations work on this GPU, how exact and how fast: the 2:4 tactic's design data.

    PYTHONPATH=. python3 benchmarks/sparse_probe.py --out /tmp/probe        # GPU, about 3-4 minutes

With torch 2.11+cu130 and cuSPARSELt 0.8.0 on the H100, `torch._C._cusparselt.mm_search` with a
bias and transpose_result=True fails for FP16 and leaves the CUDA context poisoned, so every
variant here runs in a child process: the parent hands a child the job list, the child prints
START before each job and one RESULT line after it, and when a child dies (or reports an
error, after which its context is not trusted) the parent records that job as failed and starts
a new child at the next job. A sweep over algorithm ids restarts after the id that broke it.

Per shape (BERT-large FFN: 16384 rows, 1024 -> 4096 and 4096 -> 1024; ViT-B/16 MLP at batch 64:
12608 rows, 768 -> 3072 and 3072 -> 768; and 197 rows, 768 -> 3072) and dtype (FP16, BF16),
W [N, K] pruned 2:4, x [M, K], b [N], the variants are:

- dense: F.linear(x, W, b), the baseline every ratio divides.
- default_T_bias: _cslt_sparse_mm(W_c, x^T, b, transpose_result=True), default algorithm.
- search_T_bias: mm_search with b and transpose_result=True (the GEMM's exact configuration), then that GEMM.
- search_T_nobias/fused: mm_search without b, transpose_result=True; the GEMM with b fused and that algorithm.
- search_T_nobias/added: the same algorithm, GEMM without b, then out.add_(b).
- search_T_splitk: as search_T_nobias/fused, passing the split-K setting the search returned (where the schema has it).
- search_F_nobias/T_bias: mm_search without b, transpose_result=False (what worked in the lead's probe); its
  algorithm run with b and transpose_result=True.
- search_F_nobias/F: that algorithm with transpose_result=False, no bias: the raw [N, M] GEMM; and /F+copy:
  then .t().contiguous() + b, what an [M, N] consumer would pay.
- search_F_bias: mm_search with b, transpose_result=False, then that GEMM (transposed output).
- kiln_tactic: Kiln's cusparselt_2to4 linear tactic as built (kiln/sparsity/cslt_search.py chooses the
  configuration in its own child), run as the runtime runs it.
- sweep_T_bias: every algorithm id, transpose_result=True with b fused, timed; an id that breaks the
  child is marked and the sweep goes on after it.

Times are GPU times per call inside a CUDA graph, measured by the builder's own timing.time_in_graph,
as Kiln's builder times tactics. Errors are against F.linear in FP32 on the same pruned operands.
Writes probe.json and probe.md under --out; the table is printed as it fills.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = {  # name: (M rows, K in, N out)
    "bert_ffn_up": (16384, 1024, 4096),
    "bert_ffn_down": (16384, 4096, 1024),
    "vit_fc1_b64": (12608, 768, 3072),
    "vit_fc2_b64": (12608, 3072, 768),
    "vit_fc1_b1": (197, 768, 3072),
}
VARIANTS = [
    "default_T_bias",
    "search_T_bias",
    "search_T_nobias",
    "search_T_splitk",
    "search_F_nobias",
    "search_F_bias",
    "kiln_tactic",
]
# Searches that failed (FP16, search with bias and transposed result) or were never tried on the H100.
RISKY = ["search_T_splitk", "search_F_bias", "search_T_bias"]
MAX_SWEEP = 64  # algorithm ids beyond cuSPARSELt's max are refused cleanly; this bounds the loop anyway


# ---------------------------------------------------------------------------------------------- child


def _child(jobs: list[dict]) -> None:
    import torch
    import torch.nn.functional as F

    schema = {a.name for a in torch.ops.aten._cslt_sparse_mm.default._schema.arguments}
    dev = torch.device("cuda")
    state: dict = {}

    def emit(kind, payload):
        print(f"{kind} {json.dumps(payload)}", flush=True)

    def graph_ms(fn) -> float:
        # Kiln's builder's own measure, so the probe's numbers are the ones the builder would see.
        from kiln.engine.builder.timing import time_in_graph

        fn()
        torch.cuda.synchronize()
        return time_in_graph(fn)

    def operands(shape, dtype_name):
        key = (shape, dtype_name)
        if state.get("key") != key:
            state.clear()
            torch.cuda.empty_cache()
            m, k, n = SHAPES[shape]
            dtype = getattr(torch, dtype_name)
            torch.manual_seed(0)
            w = torch.randn(n, k // 4, 4, device=dev)
            keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, w.abs().topk(2, dim=-1).indices, True)
            w = (w * keep).reshape(n, k).mul_(0.05).to(dtype)
            mp = m + (-m) % 8  # cuSPARSELt's dense operand: rows padded to a multiple of 8, as the tactic does
            x = torch.randn(mp, k, device=dev, dtype=dtype)
            b = torch.randn(n, device=dev, dtype=dtype)
            ref = F.linear(x.float(), w.float(), b.float())
            state.update(key=key, w=w, x=x, b=b, c=torch._cslt_compress(w), ref=ref, m=m)
            state["dense_ms"] = graph_ms(lambda: F.linear(x, w, b))
        return state

    def errors(out, ref):
        diff = (out.float() - ref).abs()
        return {"rel_err": float(diff.norm() / ref.norm()), "max_abs_err": float(diff.max())}

    def mm(c, xt, bias, transpose, alg, **extra):
        keywords = {"transpose_result": transpose, **extra}
        if "alg_id" in schema:
            keywords["alg_id"] = alg
        return torch._cslt_sparse_mm(c, xt, bias=bias, **keywords)

    def search(c, xt, bias, transpose):
        fn = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
        if fn is not None:
            r = fn(c, xt, bias, None, None, transpose)
            return [int(v) for v in r]
        return [int(torch._cslt_sparse_mm_search(c, xt, bias, transpose_result=transpose))]

    def row(job, variant, fn, ref, alg=None, found=None):
        emit("STEP", {"variant": variant})  # a crash from here on is this row's
        out = fn()
        torch.cuda.synchronize()
        result = {**job, "variant": variant, "works": True, "alg": alg, "search": found, **errors(out, ref)}
        result["ms"] = graph_ms(fn)
        result["dense_ms"] = state["dense_ms"]
        result["speedup"] = state["dense_ms"] / result["ms"]
        emit("RESULT", result)

    def run_job(index: int, job: dict) -> None:
        s = operands(job["shape"], job["dtype"])
        c, x, b, ref, xt = s["c"], s["x"], s["b"], s["ref"], s["x"].t()
        v = job["variant"]
        if v == "default_T_bias":
            row(job, v, lambda: mm(c, xt, b, True, 0), ref, alg=0)
        elif v == "search_T_bias":
            found = search(c, xt, b, True)
            torch.cuda.synchronize()
            row(job, v, lambda: mm(c, xt, b, True, found[0]), ref, alg=found[0], found=found)
        elif v in ("search_T_nobias", "search_T_splitk"):
            found = search(c, xt, None, True)
            torch.cuda.synchronize()
            if v == "search_T_splitk":
                extra = {}
                if len(found) >= 3 and "split_k" in schema:
                    extra["split_k"] = found[1]
                    if "split_k_mode" in schema:
                        extra["split_k_mode"] = found[2]
                    elif "split_k_one_kernel" in schema:
                        extra["split_k_one_kernel"] = bool(found[2])
                row(job, v, lambda: mm(c, xt, b, True, found[0], **extra), ref, alg=found[0], found=found)
            else:
                row(job, v + "/added", lambda: mm(c, xt, None, True, found[0]).add_(b), ref, alg=found[0], found=found)
                row(job, v + "/fused", lambda: mm(c, xt, b, True, found[0]), ref, alg=found[0], found=found)
        elif v == "search_F_nobias":
            found = search(c, xt, None, False)
            torch.cuda.synchronize()
            row(job, v + "/F", lambda: mm(c, xt, None, False, found[0]).t(), ref - b.float(), alg=found[0], found=found)
            row(job, v + "/F+copy", lambda: mm(c, xt, None, False, found[0]).t().add(b), ref, alg=found[0], found=found)
            row(job, v + "/T_bias", lambda: mm(c, xt, b, True, found[0]), ref, alg=found[0], found=found)
        elif v == "search_F_bias":
            found = search(c, xt, b, False)
            torch.cuda.synchronize()
            row(job, v, lambda: mm(c, xt, b, False, found[0]).t(), ref, alg=found[0], found=found)
        elif v == "kiln_tactic":
            from kiln.engine.ir.network import Layer
            from kiln.engine.kernels import sparse_gemm
            from kiln.engine.kernels.registry import RunContext, get_tactic
            from kiln.engine.optimize.sparse_weights import SPARSE_ATTR

            w = s["w"]
            layer = Layer("linear", "probe", ["x", "w", "b"], ["y"])
            layer.attrs[SPARSE_ATTR] = {
                "rows": w.shape[0], "cols": w.shape[1], "dtype": job["dtype"], "pattern": True, "reason": None,
            }  # fmt: skip
            tactic = get_tactic("linear", sparse_gemm.NAME)
            packed = tactic.prepare(layer, {"w": w})["w"]
            xm = x[: s["m"]]  # the real row count: the tactic pads it itself
            run = RunContext({})
            tactic.fn(layer, [xm, packed, b], run)  # the choice (in cslt_search's child) happens here
            info = layer.attrs[SPARSE_ATTR]
            found = [info["alg_id"], info.get("cslt_choice")]
            row(job, v, lambda: tactic.fn(layer, [xm, packed, b], run), ref[: s["m"]], alg=info["alg_id"], found=found)
        elif v == "sweep_T_bias":
            # The last id from a search that works (no bias, transpose_result=False), so no id past it is ever run.
            found = search(c, xt, None, False)
            torch.cuda.synchronize()
            last = found[3] if len(found) >= 4 else MAX_SWEEP - 1
            for alg in range(job.get("start", 0), min(last + 1, MAX_SWEEP)):
                emit("ALG", {"index": index, "alg": alg})
                try:
                    out = mm(c, xt, b, True, alg)
                    torch.cuda.synchronize()
                except RuntimeError as exc:
                    if "invalid" in str(exc).lower() or "not supported" in str(exc).lower():
                        emit("RESULT", {**job, "variant": v, "alg": alg, "works": False, "error": "past the last id", "end": True})
                        break  # ids past the last are refused before anything runs
                    raise
                result = {**job, "variant": v, "alg": alg, "works": True, **errors(out, ref)}
                result["ms"] = graph_ms(lambda alg=alg: mm(c, xt, b, True, alg))
                result["dense_ms"] = state["dense_ms"]
                result["speedup"] = state["dense_ms"] / result["ms"]
                emit("RESULT", result)

    for index, job in enumerate(jobs):
        emit("START", {"index": index})
        run_job(index, job)
        emit("DONE", {"index": index})


# ---------------------------------------------------------------------------------------------- parent


def _jobs(dtypes: list[str], shapes: list[str], sweep: bool) -> list[dict]:
    # What the design rests on first, the configurations expected to break the child (each costs a restart) after
    # them, the sweeps last: past --budget the rest is listed as not run.
    first = [v for v in VARIANTS if v not in RISKY]
    jobs = [{"shape": sh, "dtype": dt, "variant": v} for group in (first, RISKY) for dt in dtypes for sh in shapes for v in group]
    if sweep:
        jobs += [{"shape": sh, "dtype": dt, "variant": "sweep_T_bias"} for dt in dtypes for sh in shapes[:3]]
    return jobs


def _run(jobs: list[dict], deadline: float, command: list[str]) -> list[dict]:
    results: list[dict] = []
    queue = list(jobs)
    while queue and time.monotonic() < deadline:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        proc.stdin.write(json.dumps(queue))
        proc.stdin.close()
        current, alg, step, done, tail, late = None, None, None, 0, [], False
        for line in proc.stdout:
            kind, _, payload = line.partition(" ")
            if kind in ("START", "ALG", "STEP", "DONE", "RESULT"):
                data = json.loads(payload)
                if kind == "START":
                    current, alg, step = data["index"], None, None
                elif kind == "ALG":
                    alg = data["alg"]
                elif kind == "STEP":
                    step = data["variant"]
                elif kind == "DONE":
                    done = data["index"] + 1
                    current = None
                else:
                    results.append(data)
                    _print_row(data)
            else:
                tail = (tail + [line.rstrip()])[-6:]
            if time.monotonic() > deadline:
                late = True
                proc.kill()
                break
        proc.wait()
        if late:
            queue = queue[done if current is None else current :]
            break
        if current is None:
            queue = queue[done:]
            if proc.returncode not in (0, None) and not queue:
                break
            continue
        job = queue[current]
        error = next((t for t in reversed(tail) if "Error" in t or "error" in t), tail[-1] if tail else f"exit {proc.returncode}")
        failed = {**job, "works": False, "error": error[:240]}
        if job["variant"] == "sweep_T_bias" and alg is not None:
            failed.update(variant="sweep_T_bias", alg=alg)
            results.append(failed)
            _print_row(failed)
            queue = [{**job, "start": alg + 1}, *queue[current + 1 :]]
        else:
            if step is not None:
                failed["variant"] = step
            results.append(failed)
            _print_row(failed)
            queue = queue[current + 1 :]
    for job in queue:
        results.append({**job, "works": None, "error": "not run: out of time"})
    return results


def _fmt(r: dict) -> str:
    if r.get("works") is None:
        works = "not run"
    elif r["works"]:
        works = "yes"
    else:
        works = f"NO: {r.get('error', '')}"
    num = lambda key, f: (f % r[key]) if r.get(key) is not None else ""  # noqa: E731
    found = r.get("search")
    return (
        f"| {r['shape']} | {r['dtype']} | {r['variant']} | {works} | {r.get('alg', '') if r.get('alg') is not None else ''} "
        f"| {found if found is not None else ''} | {num('rel_err', '%.1e')} | {num('max_abs_err', '%.1e')} "
        f"| {num('ms', '%.4f')} | {num('dense_ms', '%.4f')} | {num('speedup', '%.2fx')} |"
    )


HEADER = [
    "| shape | dtype | variant | works | alg | search returned | rel err | max abs err | ms (graph) | dense ms | dense/variant |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def _print_row(r: dict) -> None:
    print(_fmt(r), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "probe_out"))
    p.add_argument("--budget", type=float, default=210.0, help="seconds before no new job starts (the table is written anyway)")
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(json.loads(sys.stdin.read()))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/sparse_probe.py needs a CUDA GPU.")
        return 2
    env = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cusparselt": getattr(getattr(torch.backends, "cusparselt", None), "version", lambda: None)(),
        "schema": str(torch.ops.aten._cslt_sparse_mm.default._schema),
        "mm_search": hasattr(getattr(torch._C, "_cusparselt", None), "mm_search"),
    }
    print(json.dumps(env), flush=True)
    os.makedirs(args.out, exist_ok=True)
    jobs = _jobs(args.dtypes.split(","), args.shapes.split(","), not args.no_sweep)
    print("\n".join(HEADER), flush=True)
    start = time.monotonic()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    results = _run(jobs, start + args.budget, [sys.executable, "-P", os.path.abspath(__file__), "--child"])
    with open(os.path.join(args.out, "probe.json"), "w") as f:
        json.dump({"env": env, "results": results, "seconds": time.monotonic() - start}, f, indent=1)
    rows = [_fmt(r) for r in results]
    with open(os.path.join(args.out, "probe.md"), "w") as f:
        f.write(f"# cuSPARSELt configurations on {env['gpu']}\n\n{json.dumps(env)}\n\n" + "\n".join(HEADER + rows) + "\n")
    print(f"\n{len(results)} rows in {time.monotonic() - start:.0f} s; written to {args.out}/probe.md and probe.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
