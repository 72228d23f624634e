"""Side-by-side benchmark: eager PyTorch, TorchScript, torch.compile(reduce-overhead) and Kiln, in one process.

    PYTHONPATH=. python3 benchmarks/compare.py --models efficientnet_b0,resnet50,vit_base_patch16_224 \
        --batches 1,large --out docs/benchmarks/h100
    python -m kiln bench --models resnet50 --batches 1 --modes inductor-ro,kiln

timm models with random weights (pretrained=False), and Hugging Face transformers models built from their
config classes with random weights (`--hf`, or names like `hf:bert` in --models; benchmarks/hf_models.py
lists them: text at 128 tokens, 'large' = 32 sequences), FP16, `torch.inference_mode()`,
`cudnn.benchmark = True`. Each call is timed alone with CUDA events after a synchronisation
(latency, host work included), after warm-up; median and p90 over --iters calls. Build time
is construction plus the first three calls (torch.compile compiles and records its CUDA graphs
there). Peak memory is the most allocated on the GPU during that mode's build and run, above
what was allocated before it started (the FP16 model and input are shared by all modes, so
they are not counted; Kiln's own weight copy is).

Modes: eager = the FP16 model as is; ts = torch.jit.optimize_for_inference(torch.jit.trace(m, x));
inductor-ro = torch.compile(m, mode="reduce-overhead"), channels-last for CNNs; kiln =
kiln.compile(m, inputs=[x], enabled_precisions={torch.half}); on request kiln-int8 / kiln-fp8 = the same with
{torch.int8 or torch.float8_e4m3fn, torch.half} and an entropy calibrator over 512 random inputs.

Throughput (samples/s) counts images, sequences or audio clips.

Writes results.json, results.md and results.png (and, with --profile, kiln_profiles.md:
Kiln's per-layer profile of each case) under --out, and prints each peer's time over Kiln's.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import kiln  # noqa: E402
from benchmarks import hf_models  # noqa: E402
from benchmarks.models import BERT_BASE, Encoder  # noqa: E402
from kiln.engine.runtime.profiler import call_times  # noqa: E402

MODELS = ["efficientnet_b0", "resnet50", "vit_base_patch16_224", "convnext_tiny", "swin_tiny_patch4_window7_224"]
# "large" batch per model: transformers at 128 need more memory than the peers' graphs leave room for comfortably.
LARGE_BATCH = {"vit_base_patch16_224": 64, "swin_tiny_patch4_window7_224": 64}
# --zoo: architectures never tuned for, across families (CNNs, mobile nets, vision transformers,
# hybrids, MLP and pooling mixers), all at 224x224 from timm with random weights.
ZOO = [
    "resnet18", "resnet50", "resnext50_32x4d", "regnety_016", "densenet121", "dla34", "repvgg_a2", "cspresnet50",
    "efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100", "ghostnet_100", "mnasnet_100", "rexnet_100",
    "tf_efficientnetv2_s", "convnext_tiny", "edgenext_small", "vit_small_patch16_224", "deit_tiny_patch16_224",
    "vit_base_patch16_224", "swin_tiny_patch4_window7_224", "levit_128", "mobilevit_s", "efficientformer_l1",
    "poolformer_s12", "mixer_b16_224", "resmlp_12_224",
]  # fmt: skip
MODES = ["eager", "ts", "inductor-ro", "kiln"]
# Models the benchmark builds itself: name -> (sequence length, config). `bert_base` is the INT8/FP8 issue's
# BERT-base-sized encoder (12 layers, hidden 768, FFN 3072) on 128 tokens; its "large" batch is 32.
ENCODERS = {"bert_base": (128, BERT_BASE)}
# On request (--modes ...,kiln-int8,kiln-fp8): Kiln with INT8 or FP8 layers next to FP16, calibrated by
# entropy calibration on CALIBRATION_IMAGES random inputs (the timm models have random weights too);
# their build time includes the calibration and the accuracy guard.
QUANTIZED_MODES = {"kiln-int8": torch.int8, "kiln-fp8": torch.float8_e4m3fn}
CALIBRATION_IMAGES = 512


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma list of timm names and hf:NAME (Hugging Face) cases")
    p.add_argument("--batches", default="1,large", help="comma list of ints; 'large' = 128 (ViT, Swin: 64; Hugging Face: 32)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--profile", action="store_true", help="also write Kiln's per-layer profile of each case")
    p.add_argument("--timing-cache", default=None, help="Kiln timing cache file (default: none, time everything)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--zoo", action="store_true", help="run the ZOO list (default modes inductor-ro,kiln)")
    p.add_argument("--threads", action="store_true", help="also measure Kiln's throughput from 1 thread and from 2 threads on 2 streams")
    p.add_argument(
        "--hf", action="store_true",
        help=f"run the Hugging Face cases {','.join(hf_models.default_names())} (default modes eager,inductor-ro,kiln); "
        f"also available by name: {','.join(hf_models.PREFIX + n for n in hf_models.HF_CASES if n not in hf_models.DEFAULT)}",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.hf:
        args.models = ",".join(hf_models.default_names())
        if args.modes == ",".join(MODES):
            args.modes = "eager,inductor-ro,kiln"
    if args.zoo:
        args.models = ",".join(ZOO)
        if args.modes == ",".join(MODES):
            args.modes = "inductor-ro,kiln"
    return args


def is_cnn(model: torch.nn.Module) -> bool:
    """Channels-last helps the peer where convolutions with spatial kernels dominate (not a ViT's patch embedding)."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return any(m.kernel_size != m.stride and max(m.kernel_size) > 1 for m in convs)


def batches_for(model: str, spec: str) -> list[int]:
    out = []
    for item in spec.split(","):
        large = LARGE_BATCH.get(model, hf_models.LARGE_BATCH if hf_models.is_hf(model) or model in ENCODERS else 128)
        out.append(large if item.strip() == "large" else int(item))
    return out


def build_mode(mode: str, model_name: str, model: torch.nn.Module, x: torch.Tensor, args):
    """Return (callable running one inference, info dict). `x`: the input, or a tuple of them (Hugging Face models)."""
    cnn = is_cnn(model)
    xs = x if isinstance(x, tuple) else (x,)
    if mode == "eager":
        return (lambda: model(*xs)), {}
    if mode == "ts":
        with torch.no_grad():
            ts = torch.jit.optimize_for_inference(torch.jit.trace(model, xs))
        return (lambda: ts(*xs)), {}
    if mode == "inductor-ro":
        m, xi = model, xs
        if cnn:
            m = copy.deepcopy(model).to(memory_format=torch.channels_last)
            xi = (x.contiguous(memory_format=torch.channels_last),)
        compiled = torch.compile(m, mode="reduce-overhead")
        return (lambda: compiled(*xi)), {"channels_last": cnn}
    if mode == "kiln":
        compiled = kiln.compile(model, inputs=list(xs), enabled_precisions={torch.half}, timing_cache_path=args.timing_cache)
        info = engine_info(compiled)
        return (lambda: compiled(*xs)), {**info, "_compiled": compiled}
    if mode in QUANTIZED_MODES and hf_models.is_hf(model_name):
        raise ValueError(f"{mode} calibrates on random images or token ids; it does not take the inputs of {model_name}")
    if mode in QUANTIZED_MODES:
        generator = torch.Generator(device=xs[0].device).manual_seed(0)
        batches = -(-CALIBRATION_IMAGES // xs[0].shape[0])
        loader = [calibration_batch(xs, generator) for _ in range(batches)]
        calibrator = kiln.ptq.DataLoaderCalibrator(loader, algo="entropy", progress=False)
        compiled = kiln.compile(
            model, inputs=list(xs), enabled_precisions={QUANTIZED_MODES[mode], torch.half}, calibrator=calibrator,
            timing_cache_path=args.timing_cache,
        )  # fmt: skip
        quantization = compiled.report.quantization
        low = sum(1 for record in quantization.values() for row in record["rows"] if not row[2].startswith("kept"))
        total = sum(len(record["rows"]) for record in quantization.values())
        info = {**engine_info(compiled), "quantized_layers": f"{low}/{total}"}
        return (lambda: compiled(*xs)), {**info, "_compiled": compiled}
    raise ValueError(f"unknown mode {mode!r}; choose from {MODES + list(QUANTIZED_MODES)}")


def engine_info(compiled) -> dict:
    """The partition summary (which ends with the engine kernels per forward, before and after fusion), and those two
    numbers on their own so the results JSON can be compared across runs."""
    return {"engine": compiled.report.summary(), "kernels_per_forward": compiled.report.kernels_per_forward()}


def calibration_batch(xs: tuple, generator: torch.Generator) -> torch.Tensor | tuple:
    """One random calibration batch shaped like the benchmark's inputs: images, or token ids with a full mask."""
    out = []
    for t in xs:
        if t.is_floating_point():
            out.append(torch.randn(t.shape, device=t.device, generator=generator).to(t.dtype))
        elif t.max() <= 1:  # an attention mask
            out.append(torch.ones_like(t))
        else:
            out.append(torch.randint(0, int(t.max()) + 1, t.shape, device=t.device, generator=generator))
    return out[0] if len(out) == 1 else tuple(out)


def stream_throughput(fn, compiled, x: torch.Tensor | tuple, batch: int, calls: int = 400) -> dict:
    """Samples/s of `calls` back-to-back calls from one thread, and split over two threads on two streams."""
    xs = x if isinstance(x, tuple) else (x,)
    import threading

    def run(n, stream):
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(n):
                compiled(*xs)

    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams:  # each stream's execution context is recorded before timing
        run(3, s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(calls, streams[0])
    torch.cuda.synchronize()
    one = calls * batch / (time.perf_counter() - t0)
    threads = [threading.Thread(target=run, args=(calls // 2, s)) for s in streams]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    two = calls * batch / (time.perf_counter() - t0)
    return {"img_per_s_1thread": round(one, 1), "img_per_s_2streams": round(two, 1)}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def run_case(model_name: str, batch: int, modes: list[str], args, profiles: list) -> list[dict]:
    if hf_models.is_hf(model_name):
        model, xs = hf_models.build(model_name, batch, "cuda", torch.half)
        x = xs if len(xs) > 1 else xs[0]
    elif model_name in ENCODERS:
        seq, cfg = ENCODERS[model_name]
        torch.manual_seed(0)
        model = Encoder(cfg).eval().cuda().half()
        x = (torch.randint(0, cfg.vocab, (batch, seq), device="cuda"), torch.ones(batch, seq, dtype=torch.long, device="cuda"))
    else:
        import timm

        torch.manual_seed(0)
        model = timm.create_model(model_name, pretrained=False).eval().cuda().half()
        x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.half)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    with torch.inference_mode():
        ref = model(*(x if isinstance(x, tuple) else (x,))).float()
    rows = []
    fn = info = compiled = out = None
    for mode in modes:
        # Leave nothing of the previous mode (torch.compile's CUDA-graph pools included) in the baseline. Its
        # compiled function was still bound to `fn` here, so the baseline held it, and the next mode's "held"
        # went negative once rebinding `fn` freed it (peer held -348 to -1496 MB in the 2026-11-25 H100 run).
        fn = info = compiled = out = None
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        held_with = None
        torch.cuda.reset_peak_memory_stats()
        row = {"model": model_name, "batch": batch, "mode": mode, "weights_mb": round(weights_mb, 1)}
        print(f"[{model_name} b{batch}] {mode} ...", flush=True)
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn, info = build_mode(mode, model_name, model, x, args)
                for _ in range(3):
                    out = fn()
                torch.cuda.synchronize()
                row["build_s"] = round(time.perf_counter() - t0, 2)
                row["rel_err_vs_eager"] = relative_error(out.float(), ref)
                times = call_times(fn, args.warmup, args.iters)
            times.sort()
            row["median_ms"] = statistics.median(times)
            row["p90_ms"] = times[int(0.9 * (len(times) - 1))]
            row["img_per_s"] = batch / row["median_ms"] * 1e3
            row["peak_mem_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
            gc.collect()
            torch.cuda.empty_cache()
            held_with = torch.cuda.memory_reserved()
            compiled = info.pop("_compiled", None)
            if compiled is not None:
                row["kiln_memory"] = {k: round(v / 2**20, 1) for k, v in compiled.memory().to_json().items() if k != "per_engine"}
            if compiled is not None and args.threads:
                row.update(stream_throughput(fn, compiled, x, batch))
            row.update(info)
            if compiled is not None and args.profile:
                with torch.inference_mode():
                    prof = kiln.profile(compiled, *(x if isinstance(x, tuple) else (x,)))
                profiles.append((model_name, batch, prof))
            print(
                f"[{model_name} b{batch}] {mode}: median {row['median_ms']:.3f} ms, p90 {row['p90_ms']:.3f} ms, "
                f"build {row['build_s']} s, peak {row['peak_mem_mb']} MB, err {row['rel_err_vs_eager']:.2e}",
                flush=True,
            )
        except Exception as exc:  # one failing peer must not lose the others' numbers
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            traceback.print_exc()
        finally:
            fn = info = compiled = out = None  # noqa: F841
            if mode == "inductor-ro":
                torch._dynamo.reset()
            if held_with is not None:
                # What the mode keeps after its calls (its weights copy, buffers, graph pools): the reserved memory
                # that releasing it gives back, with the allocator's free cache returned. Taken as a difference
                # from a baseline before the mode instead, it went negative for torch.compile in every H100 run
                # (-54 to -1496 MB): memory unrelated to the mode was freed while it ran.
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.synchronize()
                row["held_mb"] = round((held_with - torch.cuda.memory_reserved()) / 2**20, 1)
        rows.append(row)
    del model
    return rows


def environment(smoke: bool = False) -> dict:
    """GPU, versions, date and the command line, for the results files."""
    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gpu": "none (CPU smoke run)" if smoke else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "triton": triton_version,
        "timm": timm_version,
        "transformers": _version_of("transformers"),
        "kiln": kiln.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python3", os.path.relpath(sys.argv[0], ROOT) if sys.argv[0].endswith(".py") else sys.argv[0], *sys.argv[1:]]),
    }


def _version_of(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


def kiln_ratios(rows: list[dict]) -> list[str]:
    """One line per case: each peer's median time over Kiln's (above 1: Kiln is faster)."""
    lines = []
    order = MODELS + ZOO
    cases = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda c: (order.index(c[0]) if c[0] in order else 99, c[1]))
    for model, batch in cases:
        case = {r["mode"]: r for r in rows if r["model"] == model and r["batch"] == batch and "median_ms" in r}
        if "kiln" not in case:
            continue
        k = case["kiln"]["median_ms"]
        parts = [f"{m} {r['median_ms'] / k:.2f}x" for m, r in case.items() if m != "kiln"]
        lines.append(f"{model} b{batch}: kiln {k:.3f} ms; peer time / kiln time: " + ", ".join(parts))
    return lines


def markdown(rows: list[dict], env: dict) -> str:
    out = [
        "# Kiln vs eager, TorchScript and torch.compile (FP16)",
        "",
        f"- GPU: {env['gpu']}; torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), Triton {env['triton']}, "
        f"timm {env['timm']}, transformers {env.get('transformers')}, Kiln {env['kiln']}",
        f"- Date: {env['date']}",
        f"- Command: `{env['command']}`",
        "- Latency per call with CUDA events after a synchronisation, after warm-up; `vs kiln` = the mode's median over "
        "Kiln's (above 1: Kiln is faster). Peak MB: most GPU memory the mode allocated beyond the shared FP16 model and input.",
        "",
        "| model | batch | mode | median ms | p90 ms | samples/s | build s | peak MB | held MB | max rel err vs eager | vs kiln |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    kiln_ms = {(r["model"], r["batch"]): r["median_ms"] for r in rows if r["mode"] == "kiln" and "median_ms" in r}
    for r in rows:
        if "median_ms" not in r:
            out.append(f"| {r['model']} | {r['batch']} | {r['mode']} | failed: {r.get('error', '?')} | | | | | | | |")
            continue
        k = kiln_ms.get((r["model"], r["batch"]))
        ratio = f"{r['median_ms'] / k:.2f}x" if k else ""
        out.append(
            f"| {r['model']} | {r['batch']} | {r['mode']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['img_per_s']:,.0f} | "
            f"{r['build_s']} | {r['peak_mem_mb']} | {r.get('held_mb', '')} | {r['rel_err_vs_eager']:.1e} | {ratio} |"
        )
    out += summary_lines(rows)
    engines = {(r["model"], r["batch"]): r["engine"] for r in rows if r.get("engine")}
    if engines:
        out += ["", "Kiln partition per case:", ""]
        out += [f"- {m} b{b}: {text}" for (m, b), text in engines.items()]
    return "\n".join(out) + "\n"


def summary_lines(rows: list[dict]) -> list[str]:
    """Geomean of the peer's time over Kiln's per batch kind, the worst case, threads and memory."""
    lines = []
    peer = {(r["model"], r["batch"]): r for r in rows if r["mode"] == "inductor-ro" and "median_ms" in r}
    kiln_rows = [r for r in rows if r["mode"] == "kiln" and "median_ms" in r]
    ratios = {}
    for r in kiln_rows:
        case = (r["model"], r["batch"])
        if case in peer:
            ratios[case] = peer[case]["median_ms"] / r["median_ms"]
    if ratios:
        import math

        lines += ["", "Kiln against torch.compile(mode='reduce-overhead') (peer time / Kiln time, above 1: Kiln is faster):", ""]
        for kind, pick in (("batch 1", lambda b: b == 1), ("large batch", lambda b: b > 1)):
            chosen = {c: v for c, v in ratios.items() if pick(c[1])}
            if chosen:
                geo = math.exp(sum(math.log(v) for v in chosen.values()) / len(chosen))
                worst = min(chosen, key=chosen.get)
                low = f"{chosen[worst]:.2f}x ({worst[0]} b{worst[1]})"
                lines.append(f"- {kind}: geomean {geo:.2f}x over {len(chosen)} models; lowest {low}")
    errors = [r for r in kiln_rows if r["rel_err_vs_eager"] > 5e-2]
    lines.append(f"- Kiln outputs off eager by more than 5e-2 (max relative error): {len(errors)} of {len(kiln_rows)}")
    threaded = [r for r in kiln_rows if "img_per_s_2streams" in r]
    if threaded:
        lines += ["", "| model | batch | Kiln samples/s, 1 thread | 2 threads on 2 streams | ratio |", "|---|---|---|---|---|"]
        for r in threaded:
            ratio = r["img_per_s_2streams"] / r["img_per_s_1thread"]
            lines.append(f"| {r['model']} | {r['batch']} | {r['img_per_s_1thread']:,.0f} | {r['img_per_s_2streams']:,.0f} | {ratio:.2f}x |")
    memory = [r for r in kiln_rows if "kiln_memory" in r]
    if memory:
        lines += [
            "",
            "Memory held after the first calls (MB): Kiln's own accounting, and the target "
            "1.3 x FP16 weights + what the peer holds beyond its weights:",
            "",
            "| model | batch | weights | arenas | graph pools | Kiln total | peer held | target | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in memory:
            m = r["kiln_memory"]
            p = peer.get((r["model"], r["batch"]), {}).get("held_mb")
            target = 1.3 * r["weights_mb"] + (p or 0)
            met = "" if p is None else ("yes" if m["total"] <= target else "no")
            parts = [r["model"], r["batch"], m["weights"], m["arena"], m["graph_pools"], m["total"], p, f"{target:.1f}", met]
            lines.append("| " + " | ".join(str(v) for v in parts) + " |")
    return lines


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = []
    for r in rows:
        if (r["model"], r["batch"]) not in cases:
            cases.append((r["model"], r["batch"]))
    fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.6), squeeze=False)
    colors = {"eager": "#999999", "ts": "#6a9fd4", "inductor-ro": "#e3a23b", "kiln": "#c0392b"}
    for ax, (model, batch) in zip(axes[0], cases):
        case = [r for r in rows if r["model"] == model and r["batch"] == batch and "median_ms" in r]
        names = [r["mode"] for r in case]
        values = [r["median_ms"] for r in case]
        bars = ax.bar(names, values, color=[colors.get(n, "#555555") for n in names])
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{model}\nbatch {batch}", fontsize=8)
        ax.set_ylabel("median ms / call (lower is better)", fontsize=7)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        print("benchmarks/compare.py measures on a CUDA GPU; none is visible here.")
        return 2
    torch.backends.cudnn.benchmark = True
    os.makedirs(args.out, exist_ok=True)
    env = environment()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows, profiles = [], []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for batch in batches_for(model, args.batches):
            rows.extend(run_case(model, batch, modes, args, profiles))
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"env": env, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(rows, env))
    if profiles:
        with open(os.path.join(args.out, "kiln_profiles.md"), "w") as f:
            for model, batch, prof in profiles:
                f.write(f"## {model}, batch {batch}\n\n```\n{prof.table(top=30)}\n```\n\n")
        with open(os.path.join(args.out, "kiln_profiles.json"), "w") as f:
            json.dump([{"model": m, "batch": b, **p.to_json()} for m, b, p in profiles], f)
    if not args.no_plot:
        try:
            plot(rows, os.path.join(args.out, "results.png"))
        except ImportError:
            print("matplotlib is not installed: no chart")
    print(markdown(rows, env))
    for line in kiln_ratios(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
