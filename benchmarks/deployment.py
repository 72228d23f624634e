"""Deployment benchmarks (GPU): the warm engine cache, and serving through kiln.serve.

    PYTHONPATH=. python3 benchmarks/deployment.py --out docs/benchmarks/h100-deployment
    PYTHONPATH=. python3 benchmarks/deployment.py --parts cache --model resnet50
    PYTHONPATH=. python3 benchmarks/deployment.py --smoke          # CPU, tiny model: checks the script runs

cache: kiln.compile(resnet50, FP16, engine_cache=True) into an empty cache directory in one
fresh process, then the same compile (same seed, same weights) in a second fresh process, and
once more under cProfile (warm_profile.txt: where the warm compile spends its time). Each
process reports how long kiln.compile took (key, load or capture and build), its whole life
(imports included), how many torch.export calls ran (0 on a warm hit) and the output's error vs
eager. The issue's target: the warm compile at most 2 s.

serve: the model compiled with a batch range 1..--max-batch, saved, and served three ways to
clients that each send --requests single-image requests (.npy over HTTP, one at a time per
client) at several concurrency levels: kiln.serve with dynamic batching; kiln.serve with
max_batch_size=1 (a plain per-request server, same HTTP path); and, as the engine's own ceiling,
an in-process loop calling the compiled module once per request (no HTTP). Reports requests/s
and p50/p99 latency per level.

Writes results.json, results.md (and warm_profile.txt) under --out. The GPU machine has no Ray:
benchmarks/serve_wheels.sh prepares wheels to carry (see docs/deployment.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import kiln  # noqa: E402
from benchmarks.compare import environment  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="cache,serve")
    p.add_argument("--model", default="resnet50", help="a timm model name (random weights)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--smoke", action="store_true", help="CPU, a tiny model, few requests")
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile-to", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_model(name: str, smoke: bool) -> torch.nn.Module:
    if smoke:
        from kiln.demo import build_model

        return build_model()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def image_shape(smoke: bool) -> tuple[int, int, int]:
    return (3, 32, 32) if smoke else (3, 224, 224)


def settings(smoke: bool) -> tuple[str, set]:
    return ("cpu", {torch.float32}) if smoke else ("cuda", {torch.half})


def cache_child(args) -> None:
    """One fresh process: compile with the engine cache and print the time of kiln.compile as JSON."""
    device, precisions = settings(args.smoke)
    torch.manual_seed(0)  # the same weights in every process, or no compile could hit
    model = make_model(args.model, args.smoke).to(device)
    if not args.smoke:
        model = model.half()
    dtype = torch.float32 if args.smoke else torch.half
    spec = kiln.Input((1, *image_shape(args.smoke)), dtype=dtype)
    exports = []
    real_export = torch.export.export

    def counting_export(*a, **k):
        exports.append(1)
        return real_export(*a, **k)

    torch.export.export = counting_export
    options = dict(inputs=[spec], enabled_precisions=precisions, device=device, engine_cache=True, cache_dir=args.cache_dir)
    if args.profile_to:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        started = time.perf_counter()
        compiled = profiler.runcall(kiln.compile, model, **options)
        seconds = time.perf_counter() - started
        with open(args.profile_to, "w") as f:
            pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(40)
    else:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        compiled = kiln.compile(model, **options)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    x = torch.randn(1, *image_shape(args.smoke), device=device, dtype=dtype)
    with torch.no_grad():
        out, ref = compiled(x).float(), model(x).float()
    error = ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    engines = [n for n in os.listdir(args.cache_dir) if n.endswith(".kiln")]
    print(json.dumps({"compile_s": seconds, "entries": len(engines), "exports": len(exports), "rel_error": error}))


def run_cache(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for label in ("cold", "warm", "warm, profiled"):
            command = [sys.executable, os.path.abspath(__file__), "--child", "cache", "--cache-dir", cache_dir, "--model", args.model]
            command += ["--smoke"] if args.smoke else []
            if label == "warm, profiled":
                os.makedirs(args.out, exist_ok=True)
                command += ["--profile-to", os.path.join(os.path.abspath(args.out), "warm_profile.txt")]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"the {label} cache process failed:\n{done.stderr[-4000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[label] = {
                "kiln.compile s": round(result["compile_s"], 3),
                "process s": round(wall, 3),
                "cache entries": result["entries"],
                "torch.export calls": result["exports"],
                "rel. error vs eager": f"{result['rel_error']:.2e}",
            }
            print(f"cache {label}: kiln.compile {result['compile_s']:.2f} s, process {wall:.2f} s, {result}", flush=True)
    warm = results["warm"]
    print(
        f"WARM-CACHE COMPILE ({'demo model' if args.smoke else args.model}, fresh process): {warm['kiln.compile s']:.2f} s "
        f"(target <= 2 s; cold {results['cold']['kiln.compile s']:.1f} s; torch.export calls {warm['torch.export calls']})",
        flush=True,
    )
    return results


def latency_summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    return {
        "requests/s": round(len(latencies) / wall, 1),
        "p50 ms": round(statistics.median(ordered) * 1000, 2),
        "p99 ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
    }


def http_load(url: str, x: torch.Tensor, clients: int, per_client: int) -> dict:
    from kiln.serve import codec

    body, kind = codec.encode_request([x], codec.NPY)

    def client(_):
        times = []
        for _ in range(per_client):
            started = time.perf_counter()
            request = urllib.request.Request(url, data=body, headers={"content-type": kind})
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
            times.append(time.perf_counter() - started)
        return times

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for times in pool.map(client, range(clients)) for t in times]
    return latency_summary(latencies, time.perf_counter() - started)


def loop_load(compiled, x: torch.Tensor, clients: int, per_client: int) -> dict:
    """The engine alone, one request per call, requests of all clients one after another."""
    latencies = []
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(clients * per_client):
            t0 = time.perf_counter()
            compiled(x).cpu()
            latencies.append(time.perf_counter() - t0)
    return latency_summary(latencies, time.perf_counter() - started)


def run_serve(args) -> dict:
    from kiln.serve import serve

    device, precisions = settings(args.smoke)
    dtype = torch.float32 if args.smoke else torch.half
    model = make_model(args.model, args.smoke).to(device)
    if not args.smoke:
        model = model.half()
    shape = image_shape(args.smoke)
    spec = kiln.Input(min_shape=(1, *shape), opt_shape=(args.max_batch, *shape), max_shape=(args.max_batch, *shape), dtype=dtype)
    compiled = kiln.compile(model, inputs=[spec], enabled_precisions=precisions, device=device)
    levels = [int(c) for c in args.concurrency.split(",")]
    x_host = torch.randn(1, *shape, dtype=dtype)
    x_device = x_host.to(device)
    with torch.no_grad():
        for _ in range(10):
            compiled(x_device)
    results = {"in-process loop": {c: loop_load(compiled, x_device, c, args.requests) for c in levels}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.kiln")
        kiln.save(compiled, path)
        for label, max_batch in (("kiln.serve batched", None), ("kiln.serve per-request", 1)):
            server = serve(path, port=8765, max_batch_size=max_batch, batch_wait_timeout_s=0.002)
            try:
                http_load(server.url, x_host, 4, 5)  # warm-up: CUDA graphs per batch shape get recorded here
                results[label] = {}
                for c in levels:
                    results[label][c] = http_load(server.url, x_host, c, args.requests)
                    print(f"{label} concurrency {c}: {results[label][c]}", flush=True)
                results[label]["batch sizes seen"] = server.stats()["batch_sizes"]
            finally:
                server.shutdown()
    return results


def write(results: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    lines = [
        f"# Deployment benchmark ({results['environment']['gpu']})",
        "",
        "```",
        json.dumps(results["environment"], indent=2),
        "```",
        "",
    ]
    if "cache" in results:
        lines += [
            "## Engine cache: kiln.compile in a fresh process",
            "",
            "| run | kiln.compile s | process s | torch.export calls | rel. error vs eager |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['kiln.compile s']} | {v['process s']} | {v['torch.export calls']} | {v['rel. error vs eager']} |"
            for k, v in results["cache"].items()
        ]
        lines += ["", "warm_profile.txt: the profiled warm compile, by cumulative time.", ""]
    if "serve" in results:
        lines += ["## Serving: requests of batch 1", "", "| server | concurrency | requests/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
        for server, levels in results["serve"].items():
            for level, r in levels.items():
                if isinstance(r, dict) and "requests/s" in r:
                    lines.append(f"| {server} | {level} | {r['requests/s']} | {r['p50 ms']} | {r['p99 ms']} |")
        batched = results["serve"].get("kiln.serve batched", {})
        lines += ["", f"Batch sizes seen by the batched server (rows per engine call: count): {batched.get('batch sizes seen')}"]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.child == "cache":
        cache_child(args)
        return 0
    if args.smoke:
        args.requests, args.concurrency, args.max_batch = 5, "1,4", 8
    elif not torch.cuda.is_available():
        print("this benchmark measures the GPU; run it on one (or pass --smoke to check the script on the CPU).")
        return 2
    results = {"environment": environment(args.smoke) | {"model": args.model, "command": " ".join(sys.argv)}}
    parts = args.parts.split(",")
    if "cache" in parts:
        results["cache"] = run_cache(args)
    if "serve" in parts:
        results["serve"] = run_serve(args)
    write(results, args.out)
    print(f"wrote {args.out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
