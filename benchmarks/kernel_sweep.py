"""Kernel sweeps on the GPU: Kiln's Triton GEMM and depthwise tile configs against cuBLAS / cuDNN.

    PYTHONPATH=. python3 benchmarks/kernel_sweep.py gemm    # large GEMMs (ConvNeXt, ViT, BERT MLP shapes)
    PYTHONPATH=. python3 benchmarks/kernel_sweep.py small   # batch-1 GEMMs
    PYTHONPATH=. python3 benchmarks/kernel_sweep.py dw      # depthwise convs (ConvNeXt 7x7, EfficientNet 3x3 / 5x5)
    PYTHONPATH=. python3 benchmarks/kernel_sweep.py qgemm   # INT8 / FP8 GEMMs (BERT-base, resnet50 1x1) against cuBLAS
    PYTHONPATH=. python3 benchmarks/kernel_sweep.py dwln    # ConvNeXt-T's 7x7 depthwise + LayerNorm: fused vs the pair
    PYTHONPATH=. python3 benchmarks/kernel_sweep.py conv    # cspresnet50/resnet50 3x3 and stem convs + leaky_relu: implicit GEMM vs cuDNN
    PYTHONPATH=. python3 benchmarks/kernel_sweep.py qepi    # INT8/FP8 GEMM epilogues at BERT-base FC1/FC2 (qlinear tactics) vs cuBLAS

Each printed line is one shape as JSON: the library's time, then each config's, in microseconds of GPU
time per call replayed from a CUDA graph (builder/timing.time_in_graph), or the error it hit. This is how
the builder's candidate configs were chosen; models' speed is measured by compare.py. Results of the
2026-11-25 H100 runs: docs/benchmarks/2026-11-25-h100-session3/kernel-sweeps.
"""

# ruff: noqa: B023  (each timed lambda runs before its loop moves on: no late binding to fear)
from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from kiln.engine.builder.timing import time_in_graph  # noqa: E402
from kiln.engine.kernels import (  # noqa: E402
    triton_conv,
    triton_depthwise,
    triton_depthwise_norm,
    triton_gemm,
    triton_quantized_common,
    triton_quantized_gemm,
)
from kiln.engine.kernels.codegen.program import Program  # noqa: E402
from kiln.engine.kernels.triton_epilogue import finish_in_place  # noqa: E402
from kiln.engine.kernels.triton_norm import row_norm  # noqa: E402

GELU = Program(1, ({"kind": "unary", "op": "gelu", "args": [0], "attrs": {"op": "gelu", "approximate": "none"}},), (1,))
# name, M, K, N, GELU epilogue
LARGE = [
    ("convnext_b128_s1_fc1", 401408, 96, 384, True), ("convnext_b128_s1_fc2", 401408, 384, 96, False),
    ("convnext_b128_s2_fc1", 100352, 192, 768, True), ("convnext_b128_s2_fc2", 100352, 768, 192, False),
    ("convnext_b128_s3_fc1", 25088, 384, 1536, True), ("convnext_b128_s3_fc2", 25088, 1536, 384, False),
    ("vit_b64_fc1", 12608, 768, 3072, True), ("vit_b64_fc2", 12608, 3072, 768, False),
    ("bert_b32_qkv", 4096, 768, 2304, False), ("bert_b32_fc1", 4096, 768, 3072, True),
]  # fmt: skip
SMALL = [
    ("convnext_b1_s3_fc1", 196, 384, 1536, True), ("convnext_b1_s3_fc2", 196, 1536, 384, False),
    ("convnext_b1_s4_fc1", 49, 768, 3072, True), ("convnext_b1_s4_fc2", 49, 3072, 768, False),
    ("vit_b1_fc1", 197, 768, 3072, True), ("vit_b1_fc2", 197, 3072, 768, False), ("vit_b1_qkv", 197, 768, 2304, False),
]  # fmt: skip
SMALL_CONFIGS = [(64, 64, 64, 4, 3), (16, 64, 64, 4, 4), (32, 64, 64, 4, 4), (32, 32, 64, 2, 4), (16, 64, 128, 4, 3), (16, 32, 128, 2, 3)]
# name, N, C, H = W, kernel, stride
DEPTHWISE = [
    ("convnext_b128_s1", 128, 96, 56, 7, 1), ("convnext_b128_s2", 128, 192, 28, 7, 1), ("convnext_b128_s3", 128, 384, 14, 7, 1),
    ("effnet_b128_56", 128, 144, 56, 3, 1), ("effnet_b128_28_k5", 128, 240, 28, 5, 1),
    ("convnext_b1_s1", 1, 96, 56, 7, 1), ("effnet_b1_112", 1, 32, 112, 3, 1),
]  # fmt: skip
# name, M, K, N: BERT-base b32 x 128 tokens, resnet50 b128 1x1 convs
QGEMM = [
    ("bert_b32_qkv", 4096, 768, 2304), ("bert_b32_o", 4096, 768, 768), ("bert_b32_fc1", 4096, 768, 3072),
    ("bert_b32_fc2", 4096, 3072, 768), ("r50_b128_s1_expand", 401408, 64, 256), ("r50_b128_s1_reduce", 401408, 256, 64),
    ("r50_b128_s2_reduce", 100352, 512, 128), ("r50_b128_s2_expand", 100352, 128, 512), ("r50_b128_s4_expand", 6272, 512, 2048),
]  # fmt: skip
QGEMM_CONFIGS = [
    (128, 128, 128, 8, 3), (128, 64, 64, 4, 4), (64, 64, 64, 4, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
    (128, 128, 128, 4, 4), (128, 128, 64, 4, 4), (128, 256, 64, 8, 4), (64, 128, 128, 4, 4), (128, 128, 256, 8, 2),
]  # fmt: skip
# name, N, C, H = W: ConvNeXt-T's depthwise conv + LayerNorm per stage (7x7, stride 1), at batch 128 and 1
DEPTHWISE_NORM = [
    ("convnext_b128_s1", 128, 96, 56), ("convnext_b128_s2", 128, 192, 28), ("convnext_b128_s3", 128, 384, 14),
    ("convnext_b128_s4", 128, 768, 7), ("convnext_b1_s1", 1, 96, 56), ("convnext_b1_s2", 1, 192, 28),
    ("convnext_b1_s3", 1, 384, 14), ("convnext_b1_s4", 1, 768, 7),
]  # fmt: skip
# (tile elements, warps) of the fused kernel beyond its CONFIGS, to see whether another one should join them.
DEPTHWISE_NORM_TILES = [(256, 1), (1024, 1), (1024, 4), (2048, 2), (2048, 8), (4096, 4), (8192, 8), (8192, 16)]
# name, N, Cin, Cout, H = W, kernel, stride: cspresnet50 / resnet50's 3x3 convs per stage and their stride-2 ones at
# batch 128 (and two at batch 1), and the 7x7/2 stem over 3 channels at 224.
CONV = [
    ("b128_56_c64", 128, 64, 64, 56, 3, 1), ("b128_28_c128", 128, 128, 128, 28, 3, 1),
    ("b128_14_c256", 128, 256, 256, 14, 3, 1), ("b128_7_c512", 128, 512, 512, 7, 3, 1),
    ("b128_56_c128_s2", 128, 128, 128, 56, 3, 2), ("b128_28_c256_s2", 128, 256, 256, 28, 3, 2),
    ("b128_stem_7x7_s2", 128, 3, 64, 224, 7, 2), ("b1_56_c64", 1, 64, 64, 56, 3, 1), ("b1_14_c256", 1, 256, 256, 14, 3, 1),
]  # fmt: skip
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) beyond triton_conv.CONFIGS, to see whether another one should join them.
CONV_TILES = [
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 64, 4, 4),
    (128, 128, 32, 4, 4),
    (64, 64, 32, 2, 4),
    (128, 64, 32, 4, 3),
]
DEPTHWISE_TILES = [(64, 64, 4), (32, 64, 4), (16, 128, 4), (64, 32, 4), (128, 32, 4), (32, 32, 2), (8, 128, 2), (64, 64, 8)]


def us(fn) -> float:
    return round(time_in_graph(fn) * 1000, 2)


def checked(fn, out: torch.Tensor, ref: torch.Tensor, tolerance: float):
    """The config's time, or why it has none (an error, or a wrong answer)."""
    try:
        fn()
        torch.cuda.synchronize()
        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        return us(fn) if err < tolerance else f"wrong: rel err {err:.3g}"
    except Exception as exc:  # a config the compiler refuses is a result too
        return f"failed: {type(exc).__name__}: {str(exc)[:200]}"


def sweep_gemm(shapes, configs) -> None:
    for name, m, k, n, gelu in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.half)
        w = torch.randn(n, k, device="cuda", dtype=torch.half) * 0.05
        b = torch.randn(n, device="cuda", dtype=torch.half)
        out = torch.empty(m, n, device="cuda", dtype=torch.half)
        program = GELU if gelu else None
        ref = F.linear(x.float(), w.float(), b.float())
        ref = F.gelu(ref) if gelu else ref
        row = {"shape": name, "m": m, "k": k, "n": n, "gelu": gelu, "cublas": us(lambda: F.linear(x, w, b))}
        if gelu:
            row["cublas+gelu"] = us(lambda: F.gelu(F.linear(x, w, b)))
        for label, config, tma in configs:
            row[label] = checked(lambda c=config, t=tma: triton_gemm.gemm(x, w, b, [], program, c, out, tma=t), out, ref, 2e-2)
        print(json.dumps(row), flush=True)


def sweep_depthwise() -> None:
    for name, batch, c, hw, k, stride in DEPTHWISE:
        x = torch.randn(batch, c, hw, hw, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, k, k, device="cuda", dtype=torch.half) * 0.1
        bias = torch.randn(c, device="cuda", dtype=torch.half)
        taps = w[:, 0].permute(1, 2, 0).contiguous()
        attrs = {"stride": [stride] * 2, "padding": [k // 2] * 2, "dilation": [1, 1], "groups": c, "transposed": False, "activation": None}
        ref = F.conv2d(x.float(), w.float(), bias.float(), stride, k // 2, 1, c)
        w_nhwc = w.contiguous(memory_format=torch.channels_last)
        row = {"shape": name, "cudnn_nhwc": us(lambda: F.conv2d(x, w_nhwc, bias, stride, k // 2, 1, c))}
        out = torch.empty_like(ref, dtype=torch.half).contiguous(memory_format=torch.channels_last)
        for tile in DEPTHWISE_TILES:
            run = lambda t=tile: triton_depthwise.depthwise(x, taps, bias, None, attrs, out, config=t)  # noqa: E731
            row["x".join(map(str, tile))] = checked(run, out, ref, 1e-2)
        print(json.dumps(row), flush=True)


def sweep_depthwise_norm() -> None:
    """The fused depthwise conv + LayerNorm kernel per config against the pairs the builder would otherwise keep:
    cuDNN's conv or each Triton depthwise tile, then the row LayerNorm (the *_unfused tactics of depthwise_norm)."""
    for name, batch, c, hw in DEPTHWISE_NORM:
        x = torch.randn(batch, c, hw, hw, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, 7, 7, device="cuda", dtype=torch.half) * 0.1
        bias, nw, nb = (torch.randn(c, device="cuda", dtype=torch.half) for _ in range(3))
        taps = w[:, 0].permute(1, 2, 0).contiguous()
        conv = {"stride": [1, 1], "padding": [3, 3], "dilation": [1, 1], "groups": c, "transposed": False, "activation": None}
        norm = {"type": "layer", "shape": [c], "eps": 1e-6}
        ref = F.layer_norm(F.conv2d(x.float(), w.float(), bias.float(), 1, 3, 1, c).permute(0, 2, 3, 1), [c], nw.float(), nb.float(), 1e-6)
        out = torch.empty(batch, hw, hw, c, device="cuda", dtype=torch.half)
        w_nhwc = w.contiguous(memory_format=torch.channels_last)
        row = {"shape": name, "c": c}
        cudnn = lambda: row_norm(F.conv2d(x, w_nhwc, bias, 1, 3, 1, c).permute(0, 2, 3, 1), nw, nb, [c], 1e-6, False, out)  # noqa: E731
        row["cudnn+norm"] = checked(cudnn, out, ref, 2e-2)
        for label, tile in triton_depthwise.CONFIGS.items():
            pair = lambda t=tile: row_norm(  # noqa: E731
                triton_depthwise.depthwise(x, taps, bias, None, conv, config=t).permute(0, 2, 3, 1), nw, nb, [c], 1e-6, False, out
            )
            row[f"{label}+norm"] = checked(pair, out, ref, 2e-2)
        fused = [*triton_depthwise_norm.CONFIGS.items(), *((f"tile{t}_w{wp}", (t, wp)) for t, wp in DEPTHWISE_NORM_TILES)]
        for label, config in fused:
            run = lambda cf=config: triton_depthwise_norm.depthwise_norm(x, taps, bias, nw, nb, conv, norm, out, cf)  # noqa: E731
            row[label] = checked(run, out, ref, 2e-2)
        print(json.dumps(row), flush=True)


def sweep_qgemm() -> None:
    """Kiln's 8-bit GEMM per tile config (INT8 and FP8, FP16 out, per-channel dequantize + bias) against
    cuBLAS FP16, torch._int_mm (cuBLAS INT8, INT32 out) and torch._scaled_mm (cuBLASLt FP8, FP16 out)."""
    from types import SimpleNamespace

    for name, m, k, n in QGEMM:
        x = torch.randn(m, k, device="cuda", dtype=torch.half)
        w = torch.randn(n, k, device="cuda", dtype=torch.half) * 0.05
        b = torch.randn(n, device="cuda", dtype=torch.half)
        xq = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8)
        wq = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
        w_scale = torch.full((n,), 0.01, device="cuda")
        ref = (xq.float() @ wq.float().t()) * 0.01 * 0.02 + b.float()
        row = {"shape": name, "m": m, "k": k, "n": n, "cublas_fp16": us(lambda: F.linear(x, w, b))}
        row["int_mm"] = us(lambda: torch._int_mm(xq, wq.t()))
        x8, w8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        try:
            row["scaled_mm_fp8"] = us(lambda: torch._scaled_mm(x8, w8.t(), one, one, bias=b, out_dtype=torch.half))
        except Exception as exc:
            row["scaled_mm_fp8"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        out = torch.empty(1, m, n, device="cuda", dtype=torch.half)
        for qdtype, a_op, b_op in (("int8", xq, wq), ("fp8", x8, w8)):
            layer = SimpleNamespace(attrs={"qdtype": qdtype, "x_scale": 0.02, "out_dtype": "float16", "activation": None})
            want = ref if qdtype == "int8" else (x8.float() @ w8.float().t()) * 0.01 * 0.02 + b.float()
            for config in QGEMM_CONFIGS:
                run = lambda c=config, a=a_op, bb=b_op, ly=layer: triton_quantized_gemm.qgemm(  # noqa: E731
                    ly, a.unsqueeze(0), bb.t().unsqueeze(0), w_scale, b, None, c, out
                )
                row[f"{qdtype}_" + "x".join(map(str, config))] = checked(run, out[0], want, 2e-2)
        print(json.dumps(row), flush=True)


def sweep_conv() -> None:
    """conv + bias + leaky_relu: cuDNN (NHWC) then the generated in-place epilogue pass (the aten_nhwc tactic), and
    cuDNN alone for the floor, against each implicit-GEMM config with the activation fused."""
    for name, batch, cin, cout, hw, k, stride in CONV:
        x = torch.randn(batch, cin, hw, hw, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(cout, cin, k, k, device="cuda") / (cin * k * k) ** 0.5).half()
        bias = torch.randn(cout, device="cuda", dtype=torch.half)
        pad = k // 2
        attrs = {
            "stride": [stride] * 2, "padding": [pad] * 2, "dilation": [1, 1], "groups": 1, "transposed": False,
            "output_padding": [0, 0], "activation": "leaky_relu", "activation_attrs": {"alpha": 0.01}, "residual": False,
        }  # fmt: skip
        ref = F.leaky_relu(F.conv2d(x.float(), w.float(), bias.float(), stride, pad), 0.01)
        w_nhwc = w.contiguous(memory_format=torch.channels_last)
        taps = w.permute(0, 2, 3, 1).contiguous()
        out = torch.empty_like(ref, dtype=torch.half).contiguous(memory_format=torch.channels_last)
        row = {"shape": name, "cudnn_nhwc": us(lambda: F.conv2d(x, w_nhwc, bias, stride, pad))}
        unfused = lambda: finish_in_place(F.conv2d(x, w_nhwc, bias, stride, pad), None, attrs)  # noqa: E731
        out.copy_(unfused())  # checked once, timed without the copy
        row["cudnn+leaky_relu"] = checked(unfused, out, ref, 1e-2)
        tiles = [*triton_conv.CONFIGS.items(), *(("x".join(map(str, t)), t) for t in CONV_TILES)]
        for label, config in tiles:
            run = lambda c=config: triton_conv.conv_nhwc(x, taps, bias, None, attrs, c, out)  # noqa: E731
            row[label] = checked(run, out, ref, 1e-2)
        print(json.dumps(row), flush=True)


# name, M, K, N: BERT-base b32 x 128 tokens, FC1 (768 -> 3072, GELU after it) and FC2 (3072 -> 768, residual after it)
QEPI = [("bert_b32_fc1", 4096, 768, 3072), ("bert_b32_fc2", 4096, 3072, 768)]
# Each epilogue as the qlinear layer's inputs and attrs carry it (what quantize/placement.py makes).
QEPI_EPILOGUES = {
    "none": {},
    "bias": {"bias": True},
    "bias_gelu": {"bias": True, "activation": "gelu"},
    "bias_gelu_requant": {"bias": True, "activation": "gelu", "requantize": True},
    "bias_residual": {"bias": True, "residual": True},
}


def qepi_operands(qdtype: str, m: int, k: int, n: int, device: str = "cuda") -> dict:
    """A BERT-like FC layer quantized as Kiln's calibration would (per-tensor activation scale, per-channel weight
    scales from quantize/numerics), with FP16 bias and residual, and the FP16 operands cuBLAS gets."""
    from kiln.quantize.numerics import per_channel_weight, quantize, scale_from_amax

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, generator=g)
    w = torch.randn(n, k, device=device, generator=g) / k**0.5
    bias = (torch.randn(n, device=device, generator=g) * 0.1).half()
    residual = torch.randn(m, n, device=device, generator=g).half()
    x_scale = scale_from_amax(x.abs().max().item(), qdtype)
    w_q, w_scales = per_channel_weight(w, 0, qdtype)
    out_scale = scale_from_amax(F.gelu(F.linear(x, w, bias.float())).abs().max().item(), qdtype)
    return {
        "x_q": quantize(x, x_scale, 0, qdtype), "w_q": w_q, "w_scale": torch.tensor(w_scales, device=device),
        "bias": bias, "residual": residual, "x_scale": x_scale, "out_scale": out_scale,
        "x16": x.half(), "w16": w.half(),
    }  # fmt: skip


def qepi_layer(qdtype: str, epilogue: dict, ops: dict):
    """The qlinear layer and its input tensors, as the engine's plan holds them."""
    from kiln.engine.ir.network import Layer

    attrs = {"qdtype": qdtype, "x_scale": ops["x_scale"], "x_zero_point": 0, "activation": epilogue.get("activation")}
    attrs.update(activation_attrs={"approximate": "none"} if "activation" in epilogue else {}, residual=bool(epilogue.get("residual")))
    attrs.update(out_dtype="float16", dtype="float16")
    if epilogue.get("requantize"):
        storage = "int8" if qdtype == "int8" else "float8_e4m3fn"
        attrs.update(out_dtype=storage, dtype=storage, out_scale=ops["out_scale"], out_zero_point=0, out_qmin=-128, out_qmax=127)
    bias = ops["bias"] if epilogue.get("bias") else None
    residual = ops["residual"] if epilogue.get("residual") else None
    names = ["x", "w", "b" if bias is not None else None, "r" if residual is not None else None, "s"]
    return Layer("qlinear", "fc", names, ["y"], attrs), [ops["x_q"], ops["w_q"], bias, residual, ops["w_scale"]]


def check_qepi(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Loud, not a row entry: a wrong kernel here means a wrong engine. FP16 outputs within FP16 rounding of the exact
    reference; 8-bit outputs the same values except one step apart on under 2% (FP32 contraction in the kernel)."""
    if out.dtype != ref.dtype or out.shape != ref.shape:
        raise SystemExit(f"qepi {what}: kernel gave {out.dtype} {tuple(out.shape)}, reference {ref.dtype} {tuple(ref.shape)}")
    o, r = out.float(), ref.float()
    if ref.dtype == torch.float16:
        err = ((o - r).abs().max() / r.abs().max()).item()
        if not err < 2e-3:
            raise SystemExit(f"qepi {what}: max error {err:.3g} of the output's range against the reference tactic")
        return
    if ref.dtype == torch.int8:
        step = torch.ones_like(r)
    else:  # one e4m3 step at the larger magnitude: 2^(exponent - 3), 2^-9 below the normal range
        step = torch.exp2(torch.floor(torch.log2(torch.maximum(o.abs(), r.abs()).clamp_min(2.0**-6))) - 3)
    far, differ = ((o - r).abs() > step).sum().item(), (o != r).float().mean().item()
    if far or differ >= 0.02:
        raise SystemExit(f"qepi {what}: {far} values more than one 8-bit step from the reference, {differ:.2%} differ")


def qepi_calls(qdtype: str, ops: dict) -> dict:
    """(epilogue, config label) -> (layer, inputs, call): each registered qlinear tactic on its own prepared weight,
    called as the engine calls it."""
    from kiln.engine.kernels.registry import BuildTarget, RunContext, get_tactic

    target, run_ctx = BuildTarget(torch.device("cuda"), torch.float16), RunContext({})
    calls = {}
    for epi_name, epilogue in QEPI_EPILOGUES.items():
        layer, inputs = qepi_layer(qdtype, epilogue, ops)
        for config in triton_quantized_gemm.TILE_CONFIGS:
            t = get_tactic("qlinear", triton_quantized_gemm._name(qdtype, config))
            if not t.when(layer, target):
                raise SystemExit(f"qepi: tactic {t.name} does not take the {epi_name} layer ({layer.attrs})")
            prepared = [inputs[0], t.prepare(layer, {"w": inputs[1]})["w"], *inputs[2:]]
            calls[epi_name, "x".join(map(str, config))] = (layer, inputs, lambda t=t, ly=layer, p=prepared: t.fn(ly, p, run_ctx))
    return calls


def compile_in_parallel(calls: dict, keys) -> None:
    """First calls from a thread pool, a stream each: Triton compiles there, ptxas runs in parallel (builder/precompile.py)."""
    from concurrent.futures import ThreadPoolExecutor

    def first_call(key):
        with torch.cuda.stream(torch.cuda.Stream()):
            calls[key][2]()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(first_call, list(keys)))
    torch.cuda.synchronize()


def sweep_qepi(one_tile: bool = False) -> None:
    """Kiln's 8-bit GEMM through the registered qlinear tactics (the engine's code path: the tactic's prepare, its run
    function, its generated epilogue), per epilogue, against cuBLAS FP16 (F.linear) with a separate GELU / residual add.

    Per (shape, 8-bit dtype) one JSON line: each epilogue's time at its fastest tile config (the builder's choice) with
    that config's name, and every config's time under "by_tile". With --one-tile, the epilogues other than bias are
    timed only at bias's fastest tile (fewer compiles). Every kernel is first checked against the reference tactic
    (exact integer arithmetic) and the sweep stops on a wrong one. Kernels compile from a thread pool first; the run
    takes about a minute on an H100 host."""
    from kiln.engine.kernels.registry import RunContext, get_tactic

    reference = get_tactic("qlinear", "reference").fn
    fp8 = torch.cuda.get_device_capability() >= triton_quantized_common.FP8_MIN_CAPABILITY
    for name, m, k, n in QEPI:
        cublas = None
        for qdtype in ("int8", "fp8") if fp8 else ("int8",):
            ops = qepi_operands(qdtype, m, k, n)
            if cublas is None:
                x16, w16, b16, r16 = ops["x16"], ops["w16"], ops["bias"], ops["residual"]
                cublas = {
                    "cublas_fp16": us(lambda: F.linear(x16, w16)),
                    "cublas_fp16_bias": us(lambda: F.linear(x16, w16, b16)),
                    "cublas_fp16_bias+gelu": us(lambda: F.gelu(F.linear(x16, w16, b16))),
                    "cublas_fp16_bias+residual": us(lambda: F.linear(x16, w16, b16) + r16),
                }
            calls = qepi_calls(qdtype, ops)
            refs = {}

            def timed(key):
                layer, inputs, call = calls[key]
                if key[0] not in refs:
                    refs[key[0]] = reference(layer, inputs, RunContext({}))
                check_qepi(call(), refs[key[0]], f"{name} {qdtype} {key[0]} {key[1]}")
                return us(call)

            labels = sorted({label for _, label in calls})
            by_tile = {e: {} for e in QEPI_EPILOGUES}
            if one_tile:
                compile_in_parallel(calls, [("bias", label) for label in labels])
                by_tile["bias"] = {label: timed(("bias", label)) for label in labels}
                best = min(by_tile["bias"], key=by_tile["bias"].get)
                keys = [(e, best) for e in QEPI_EPILOGUES if e != "bias"]
            else:
                keys = list(calls)
            compile_in_parallel(calls, keys)
            for key in keys:
                by_tile[key[0]][key[1]] = timed(key)
            row = {"shape": name, "m": m, "k": k, "n": n, "qdtype": qdtype, **cublas}
            for epi_name, times in by_tile.items():
                fastest = min(times, key=times.get)
                row[epi_name], row[f"{epi_name}_tile"] = times[fastest], fastest
            row["by_tile"] = by_tile
            print(json.dumps(row), flush=True)


def main(argv=None) -> None:
    part = (argv or sys.argv[1:] or ["gemm"])[0]
    if part == "gemm":
        configs = [(n, c, False) for n, c in triton_gemm.CONFIGS.items()] + [(n, c, True) for n, c in triton_gemm.TMA_CONFIGS.items()]
        sweep_gemm(LARGE, configs)
    elif part == "small":
        sweep_gemm(SMALL, [("x".join(map(str, c)), c, False) for c in SMALL_CONFIGS])
    elif part == "dw":
        sweep_depthwise()
    elif part == "qgemm":
        sweep_qgemm()
    elif part == "dwln":
        sweep_depthwise_norm()
    elif part == "conv":
        sweep_conv()
    elif part == "qepi":
        sweep_qepi(one_tile="--one-tile" in (argv or sys.argv[1:]))
    else:
        raise SystemExit(f"unknown part {part!r}: choose gemm, small, dw, qgemm, dwln, conv or qepi")


if __name__ == "__main__":
    main()
