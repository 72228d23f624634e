"""Build time of kiln.compile, cold and with a warm timing cache, each in a fresh process.

    PYTHONPATH=. python3 benchmarks/build_time.py --models efficientnet_b0,mobilenetv3_large_100 --out $OUT/build

Cold: a new process with an empty Triton cache (TRITON_CACHE_DIR) and an empty Kiln kernel cache
(KILN_CACHE_DIR), no timing cache: every Triton candidate is compiled and every tactic timed.
Warm: another new process with those caches as the cold build left them and the timing cache file it
wrote: what a second build on the same machine costs. The engine cache stays off in both (it would
skip the build altogether). Each build runs in its own process because Triton also keeps compiled
kernels in memory, so a second build in one process would not be cold. timm models, random
weights, FP16, batch --batch, 224x224. Writes build_times.json and build_times.md under --out.

A build's seconds are kiln.compile plus the first call (which records the CUDA graph); the second
table of build_times.md says where they went: each stage of compiled.report.build_seconds
(capture, lowering, ..., precompile, timing, running layers, planning; report/build_time.py) and the
first call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, time, torch, timm, kiln
name, batch, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = timm.create_model(name, pretrained=False).eval().cuda().half()
x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.half)
t0 = time.perf_counter()
with torch.inference_mode():
    compiled = kiln.compile(model, inputs=[x], enabled_precisions={torch.half}, timing_cache_path=cache)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    compiled(x)
torch.cuda.synchronize()
t2 = time.perf_counter()
stages = dict(compiled.report.build_seconds)
stages.pop("total", None)
stages["first call"] = round(t2 - t1, 3)
print("KILN_BUILD_S", json.dumps(t2 - t0))
print("KILN_STAGES", json.dumps(stages))
"""


def build_once(name: str, batch: int, cache_root: str, timing_cache: str) -> tuple[float, dict[str, float]]:
    """Seconds of one build in a fresh process, and its seconds by stage."""
    env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(cache_root, "triton"), KILN_CACHE_DIR=os.path.join(cache_root, "kiln"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", CHILD, name, str(batch), timing_cache], env=env, capture_output=True, text=True)
    found = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("KILN_BUILD_S", "KILN_STAGES"):
            found[key] = json.loads(value)
    if "KILN_BUILD_S" in found:
        return round(found["KILN_BUILD_S"], 2), found.get("KILN_STAGES", {})
    raise RuntimeError(f"build of {name} failed:\n{done.stderr[-3000:]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = "efficientnet_b0,resnet50,vit_base_patch16_224,convnext_tiny,swin_tiny_patch4_window7_224,mobilenetv3_large_100"
    p.add_argument("--models", default=models)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        with tempfile.TemporaryDirectory() as root:
            timing_cache = os.path.join(root, "timing.json")
            row = {"model": name, "batch": args.batch}
            try:
                row["cold_s"], row["cold_stages"] = build_once(name, args.batch, root, timing_cache)
                row["warm_s"], row["warm_stages"] = build_once(name, args.batch, root, timing_cache)
            except RuntimeError as exc:
                row["error"] = str(exc).splitlines()[-1][:300]
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(os.path.join(args.out, "build_times.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| model | batch | cold build s | warm timing cache s |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r.get('cold_s', r.get('error'))} | {r.get('warm_s', '')} |" for r in rows]
    lines += ["", *stage_table(rows)]
    with open(os.path.join(args.out, "build_times.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def stage_table(rows: list[dict]) -> list[str]:
    """Markdown rows: per model and build (cold, warm), seconds per stage in the order the builds ran them."""
    names: list[str] = []
    for r in rows:
        for build in ("cold", "warm"):
            names += [n for n in r.get(f"{build}_stages", {}) if n not in names]
    if not names:
        return []
    lines = ["| model | build | s | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for r in rows:
        for build in ("cold", "warm"):
            stages = r.get(f"{build}_stages")
            if stages:
                cells = " | ".join(f"{stages[n]:.2f}" if n in stages else "" for n in names)
                lines.append(f"| {r['model']} | {build} | {r[f'{build}_s']} | {cells} |")
    return lines


if __name__ == "__main__":
    main()
