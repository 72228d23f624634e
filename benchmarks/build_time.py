"""Build time of kiln.compile, cold and with a warm timing cache, each in a fresh process.

    PYTHONPATH=. python3 benchmarks/build_time.py --models efficientnet_b0,mobilenetv3_large_100 --out $OUT/build

Cold: a new process with an empty Triton cache (TRITON_CACHE_DIR) and an empty Kiln kernel cache
(KILN_CACHE_DIR), no timing cache: every Triton candidate is compiled and every tactic timed.
Warm: another new process with those caches as the cold build left them and the timing cache file it
wrote: what a second build on the same machine costs. The engine cache stays off in both (it would
skip the build altogether). Each build runs in its own process because Triton also keeps compiled
kernels in memory, so a second build in one process would not be cold. timm models, random
weights, FP16, batch --batch, 224x224. Writes build_times.json and build_times.md under --out.
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
    compiled(x)
torch.cuda.synchronize()
print("KILN_BUILD_S", json.dumps(time.perf_counter() - t0))
"""


def build_once(name: str, batch: int, cache_root: str, timing_cache: str) -> float:
    env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(cache_root, "triton"), KILN_CACHE_DIR=os.path.join(cache_root, "kiln"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", CHILD, name, str(batch), timing_cache], env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("KILN_BUILD_S "):
            return round(json.loads(line.split(" ", 1)[1]), 2)
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
                row["cold_s"] = build_once(name, args.batch, root, timing_cache)
                row["warm_s"] = build_once(name, args.batch, root, timing_cache)
            except RuntimeError as exc:
                row["error"] = str(exc).splitlines()[-1][:300]
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(os.path.join(args.out, "build_times.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| model | batch | cold build s | warm timing cache s |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r.get('cold_s', r.get('error'))} | {r.get('warm_s', '')} |" for r in rows]
    with open(os.path.join(args.out, "build_times.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
