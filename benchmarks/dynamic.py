"""Dynamic shapes on the GPU: one ranged Kiln engine vs an engine built statically per shape, and
torch.compile(backend="kiln") vs kiln.compile.

    PYTHONPATH=. python3 benchmarks/dynamic.py --out docs/benchmarks/h100-dynamic
    python3 benchmarks/dynamic.py --smoke --out /tmp/smoke     # CPU: correctness only, no timings

Cases (FP16, torch.inference_mode, random weights):
- resnet50 (timm): batch range 1..128, opt 32, measured at batch 1, 8, 32, 128.
- encoder: a BERT-base-sized encoder (benchmarks/models.py; 12 layers, hidden 768, 12 heads,
  padding mask) at batch 8, sequence range 16..512, opt 128, measured at 16, 128, 512.
- backend: efficientnet_b0 batch 1, torch.compile(backend="kiln") vs kiln.compile.

Each engine (ranged, ranged+tune, the static ones, the backend pair) is built and measured in
a process of its own, so a first call pays for every per-shape library setup (cuDNN plans,
cuBLAS heuristics, lazy kernel loading) as in a fresh server, not after another engine warmed
the caches. For each shape of a ranged engine: the first call at that shape (wall clock,
synchronised: the CUDA-graph record), then the median of --iters calls each timed alone with CUDA events,
as benchmarks/compare.py times. The static engine is built for exactly that shape. With
--tune-new-shapes a second ranged engine is built with tune_new_shapes=True (cuDNN searches
its algorithms at each new shape) to show what that buys and costs.

Writes results.json, results.md and results.png under --out.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import kiln  # noqa: E402
from benchmarks.compare import environment, relative_error  # noqa: E402
from benchmarks.models import BERT_BASE, TINY_ENCODER, Encoder, TinyCnn  # noqa: E402
from kiln.engine.runtime.profiler import call_times  # noqa: E402

# Targets from the dynamic-shapes issue.
RANGED_OVER_STATIC = 1.1
FIRST_CALL_MS = 50.0
BACKEND_OVER_KILN = 1.1


@dataclass
class RangedCase:
    """A model, how to make its inputs at one size, and the range its ranged engine covers."""

    name: str
    model: torch.nn.Module
    make_inputs: Callable[[int], list[torch.Tensor]]
    # The kiln.Input specs for a range (min, opt, max) of the varying size.
    specs: Callable[[int, int, int], list[kiln.Input]]
    size_range: tuple[int, int, int]
    sizes: list[int]
    size_name: str


@dataclass
class Run:
    device: torch.device
    precisions: set
    warmup: int
    iters: int
    timed: bool  # False on the CPU smoke run: correctness only
    rows: list[dict] = field(default_factory=list)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="resnet50,encoder,backend")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--tune-new-shapes", action="store_true", help="also build a ranged engine that re-tunes cuDNN per shape")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script and the answers, times nothing")
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-isolate", dest="isolate", action="store_false", help="run every step in this process (default: one process each)")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def image_specs(channels: int, hw: int, dtype: torch.dtype):
    def specs(lo: int, opt: int, hi: int) -> list[kiln.Input]:
        shape = lambda b: (b, channels, hw, hw)  # noqa: E731
        return [kiln.Input(min_shape=shape(lo), opt_shape=shape(opt), max_shape=shape(hi), dtype=dtype, name="x")]

    return specs


def token_specs(batch: int):
    def specs(lo: int, opt: int, hi: int) -> list[kiln.Input]:
        ranged = dict(min_shape=(batch, lo), opt_shape=(batch, opt), max_shape=(batch, hi), dtype=torch.int64)
        return [kiln.Input(**ranged, name="input_ids"), kiln.Input(**ranged, name="attention_mask")]

    return specs


def token_inputs(batch: int, vocab: int, device: torch.device):
    def make(seq: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seq)
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[: batch // 2, seq - seq // 4 :] = 0  # half the rows padded in their last quarter
        return [ids.to(device), mask.to(device)]

    return make


def image_inputs(hw: int, dtype: torch.dtype, device: torch.device):
    return lambda b: [torch.randn(b, 3, hw, hw, generator=torch.Generator().manual_seed(b)).to(device, dtype)]


def ranged_cases(names: list[str], smoke: bool, device: torch.device, dtype: torch.dtype) -> list[RangedCase]:
    cases = []
    if "resnet50" in names:
        if smoke:
            model, hw, rng, sizes, label = TinyCnn(), 16, (1, 4, 8), [1, 3, 8], "tiny_cnn"
        else:
            import timm

            model, hw, label = timm.create_model("resnet50", pretrained=False), 224, "resnet50"
            rng, sizes = (1, 32, 128), [1, 8, 32, 100, 128]
        model = model.eval().to(device, dtype)
        cases.append(RangedCase(label, model, image_inputs(hw, dtype, device), image_specs(3, hw, dtype), rng, sizes, "batch"))
    if "encoder" in names:
        if smoke:
            cfg, batch, rng, sizes = TINY_ENCODER, 2, (4, 8, 32), [4, 8, 32]
        else:
            cfg, batch, rng, sizes = BERT_BASE, 8, (16, 128, 512), [16, 100, 128, 384, 512]
        label = "tiny_encoder" if smoke else "bert_base_encoder"
        model = Encoder(cfg).eval().to(device, dtype)
        cases.append(RangedCase(label, model, token_inputs(batch, cfg.vocab, device), token_specs(batch), rng, sizes, "seq"))
    return cases


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_call(fn, device: torch.device):
    """(wall-clock ms, output) of one call, synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3, out


def steady(fn, run: Run) -> dict:
    if not run.timed:
        return {}
    times = sorted(call_times(fn, run.warmup, run.iters))
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_ranged(case: RangedCase, run: Run, variant: str, **options) -> None:
    lo, opt, hi = case.size_range
    print(f"[{case.name}] building {variant} engine for {case.size_name} {lo}..{hi} (opt {opt}) ...", flush=True)
    start = time.perf_counter()
    compiled = kiln.compile(case.model, inputs=case.specs(lo, opt, hi), enabled_precisions=run.precisions, **options)
    build_s = round(time.perf_counter() - start, 2)
    for size in case.sizes:
        inputs = case.make_inputs(size)
        row = {"case": case.name, "size_name": case.size_name, "size": size, "variant": variant, "build_s": build_s}
        # The builder ran min, opt and max in this process, so library caches are warm there; any other size is new.
        row["shape"] = {lo: "min", opt: "opt", hi: "max"}.get(size, "new")
        measure_calls(row, compiled, inputs, case.model(*inputs), run)
    del compiled
    free_memory(run.device)


def measure_static(case: RangedCase, run: Run) -> None:
    for size in case.sizes:
        print(f"[{case.name}] building static engine for {case.size_name} {size} ...", flush=True)
        start = time.perf_counter()
        compiled = kiln.compile(case.model, inputs=case.specs(size, size, size), enabled_precisions=run.precisions)
        inputs = case.make_inputs(size)
        row = {"case": case.name, "size_name": case.size_name, "size": size, "variant": "static"}
        row["build_s"] = round(time.perf_counter() - start, 2)
        measure_calls(row, compiled, inputs, case.model(*inputs), run)
        del compiled
        free_memory(run.device)


def measure_calls(row: dict, compiled, inputs: list[torch.Tensor], ref: torch.Tensor, run: Run) -> None:
    """Fill `row` with the first call's cost, the error against eager and the steady-state latency."""
    fn = functools.partial(compiled, *inputs)
    first_ms, out = first_call(fn, run.device)
    row["rel_err_vs_eager"] = relative_error(out.float(), ref.float())
    if run.timed:
        row["first_call_ms"] = round(first_ms, 2)
        row.update(steady(fn, run))
    else:  # CPU times say nothing about the engine's speed: the smoke run keeps none
        row.pop("build_s", None)
    report(row)
    run.rows.append(row)


def measure_backend(run: Run, smoke: bool, dtype: torch.dtype) -> None:
    """torch.compile(backend="kiln") vs kiln.compile on one static shape."""
    if smoke:
        model, x, label = TinyCnn(), torch.randn(1, 3, 16, 16), "tiny_cnn"
    else:
        import timm

        model, x, label = timm.create_model("efficientnet_b0", pretrained=False), torch.randn(1, 3, 224, 224), "efficientnet_b0"
    model = model.eval().to(run.device, dtype)
    x = x.to(run.device, dtype)
    ref = model(x)
    builds = {
        "kiln.compile": lambda: kiln.compile(model, inputs=[x], enabled_precisions=run.precisions),
        "torch.compile(backend=kiln)": lambda: torch.compile(model, backend="kiln", options={"enabled_precisions": run.precisions}),
    }
    for variant, build in builds.items():
        torch._dynamo.reset()
        print(f"[backend {label}] {variant} ...", flush=True)
        start = time.perf_counter()
        compiled = build()
        # build s: kiln.compile's own; torch.compile builds in its first call (first call ms).
        row = {"case": f"backend {label}", "size_name": "batch", "size": 1, "variant": variant}
        row["build_s"] = round(time.perf_counter() - start, 2)
        measure_calls(row, compiled, [x], ref, run)
        del compiled
        free_memory(run.device)
    torch._dynamo.reset()


def report(row: dict) -> None:
    timing = ""
    if "median_ms" in row:
        timing = f"median {row['median_ms']:.3f} ms, first call {row['first_call_ms']} ms, build {row['build_s']} s, "
    print(f"[{row['case']} {row['size_name']} {row['size']}] {row['variant']}: {timing}err {row['rel_err_vs_eager']:.2e}", flush=True)


def verdicts(rows: list[dict]) -> list[str]:
    """One line per target, with the measured number and whether it is met."""
    lines = []
    timed = [r for r in rows if "median_ms" in r]
    static = {(r["case"], r["size"]): r for r in timed if r["variant"] == "static"}
    for r in timed:
        key = (r["case"], r["size"])
        if r["variant"].startswith("ranged") and key in static:
            ratio = r["median_ms"] / static[key]["median_ms"]
            ok = "met" if ratio <= RANGED_OVER_STATIC else "MISSED"
            lines.append(
                f"{r['case']} {r['size_name']} {r['size']} ({r.get('shape', '?')}) {r['variant']}: {r['median_ms']:.3f} ms vs static "
                f"{static[key]['median_ms']:.3f} ms = {ratio:.3f}x (target <= {RANGED_OVER_STATIC}x: {ok}); "
                f"first call {r['first_call_ms']} ms (target <= {FIRST_CALL_MS:.0f} ms: "
                f"{'met' if r['first_call_ms'] <= FIRST_CALL_MS else 'MISSED'})"
            )
    backend = {r["variant"]: r for r in timed if r["case"].startswith("backend")}
    if {"kiln.compile", "torch.compile(backend=kiln)"} <= set(backend):
        k, b = backend["kiln.compile"]["median_ms"], backend["torch.compile(backend=kiln)"]["median_ms"]
        ok = "met" if b / k <= BACKEND_OVER_KILN else "MISSED"
        lines.append(f"backend: torch.compile(backend=kiln) {b:.3f} ms vs kiln.compile {k:.3f} ms = {b / k:.3f}x (target <= 1.1x: {ok})")
    return lines


def markdown(rows: list[dict], env: dict, timed: bool) -> str:
    out = ["# Dynamic shapes: one ranged Kiln engine vs static engines; torch.compile backend vs kiln.compile", ""]
    out += [f"- {k}: {env[k]}" for k in env]
    if not timed:
        out += ["- CPU smoke run: correctness only, no timings."]
    out += [
        "- `first call ms`: wall clock of the first call at that shape, synchronised (for a ranged engine: the CUDA-graph "
        "record at a new shape). (min)/(opt)/(max): a ranged engine's tuning points, which its build ran in the same "
        "process; (new): a size the process had not seen. `median ms`/`p90 ms`: per call with CUDA events after warm-up.",
        "",
        "| case | size | variant | median ms | p90 ms | first call ms | build s | max rel err vs eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | {r.get('size', '')} | {r.get('variant', '')} | failed: {r['error']} | | | | |")
            continue
        med, p90, first, build = (f"{r[k]:.3f}" if k in r else "-" for k in ("median_ms", "p90_ms", "first_call_ms", "build_s"))
        point = f" ({r['shape']})" if "shape" in r else ""
        where = f"{r['case']} | {r['size_name']} {r['size']}{point} | {r['variant']}"
        out.append(f"| {where} | {med} | {p90} | {first} | {build} | {r['rel_err_vs_eager']:.1e} |")
    lines = verdicts(rows)
    if lines:
        out += ["", "Targets:", ""] + [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in dict.fromkeys(r["case"] for r in rows if "median_ms" in r) if not c.startswith("backend")]
    if not cases:
        return
    fig, axes = plt.subplots(1, len(cases), figsize=(4.5 * len(cases), 3.6), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["case"] == case):
            pts = [(r["size"], r["median_ms"]) for r in rows if r["case"] == case and r["variant"] == variant and "median_ms" in r]
            ax.plot(*zip(*pts), marker="o", label=variant)
        size_name = next(r["size_name"] for r in rows if r["case"] == case)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(size_name)
        ax.set_ylabel("median ms / call (lower is better)")
        ax.set_title(case, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def steps_for(names: list[str], tune_new_shapes: bool) -> list[str]:
    """The measurements, as "case:variant" (each one a process of its own with --isolate)."""
    steps = []
    for name in [n for n in names if n != "backend"]:
        steps += [f"{name}:ranged"] + ([f"{name}:ranged+tune"] if tune_new_shapes else []) + [f"{name}:static"]
    return steps + (["backend"] if "backend" in names else [])


def run_step(step: str, run: Run, smoke: bool, dtype: torch.dtype) -> None:
    name, _, variant = step.partition(":")
    if name == "backend":
        measure_backend(run, smoke, dtype)
        return
    (case,) = ranged_cases([name], smoke, run.device, dtype)
    if variant == "static":
        measure_static(case, run)
    else:
        measure_ranged(case, run, variant, **({"tune_new_shapes": True} if variant == "ranged+tune" else {}))


def run_isolated(step: str, argv: list[str], out: str) -> list[dict]:
    """Run one step in a fresh process: its first calls pay for every library setup, as in a new server."""
    child_out = os.path.join(out, "steps", step.replace(":", "_").replace("+", "_"))
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--only", step, "--out", child_out, "--no-plot", "--no-isolate"]
    done = subprocess.run(cmd, cwd=ROOT)
    try:
        with open(os.path.join(child_out, "results.json")) as f:
            return json.load(f)["rows"]
    except (OSError, ValueError, KeyError):
        return [{"case": step, "error": f"the process for {step} exited with {done.returncode} and left no results"}]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.smoke:
        device, dtype, precisions = torch.device("cpu"), torch.float32, {torch.float32}
    elif torch.cuda.is_available():
        device, dtype, precisions = torch.device("cuda"), torch.float16, {torch.half}
    else:
        print("benchmarks/dynamic.py measures on a CUDA GPU; none is visible here (try --smoke).")
        return 2
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    env = environment(smoke=args.smoke)
    run = Run(device, precisions, args.warmup, args.iters, timed=not args.smoke)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    isolate = args.isolate and not args.smoke and not args.only
    for step in [args.only] if args.only else steps_for(names, args.tune_new_shapes):
        if isolate:
            run.rows += run_isolated(step, argv, args.out)
        else:
            with torch.inference_mode():
                guarded(functools.partial(run_step, step, run, args.smoke, dtype), run.rows, step)
        save(run.rows, env, args.out)
    text = markdown(run.rows, env, run.timed)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    if run.timed and not args.no_plot:
        try:
            plot(run.rows, os.path.join(args.out, "results.png"))
        except ImportError:
            print("matplotlib is not installed: no chart")
    print(text)
    return 0


def guarded(step: Callable[[], None], rows: list[dict], case: str) -> None:
    """One failing measurement must not lose the others' numbers."""
    try:
        step()
    except Exception as exc:
        rows.append({"case": case, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"})
        traceback.print_exc()


def save(rows: list[dict], env: dict, out: str) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
