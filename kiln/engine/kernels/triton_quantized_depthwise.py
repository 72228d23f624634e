"""INT8 and FP8 depthwise convolution in Triton over NHWC (qconv with groups == Cin == Cout).

A depthwise conv has no reduction over channels, so tensor cores do not help: each program
takes a tile of output pixels x channels, walks the KH x KW taps with one coalesced NHWC load
per tap, and accumulates the 8-bit products in INT32 (FP32 for FP8). Padding taps read the
activation zero point, and the zero-point compensation uses the per-channel sum of the taps.
Then the shared 8-bit tail (triton_quantized_common) before the single write.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.implicit_gemm import output_size
from kiln.engine.kernels.codegen.tiles import index_range, wide_index
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import load_template, nhwc_rows, triton
from kiln.engine.kernels.triton_quantized_common import EPILOGUE_TAIL, accumulator_type, applies, epilogue_args, output_dtype, residual_load

TEMPLATE = (
    """
@triton.jit(do_not_specialize=["M", "x_zp"])
def qdepthwise_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, res_ptr, c_ptr, M, N,
    H, W, OH, OW, SH, SW, PH, PW, DH, DW, KH, KW,
    x_scale, x_zp, out_inv_scale, out_qmin, out_qmax, res_scale, res_zp,
    HAS_ZP: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_MODE: tl.constexpr, OUT_ZP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE_INDEX: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
ROW_RANGE
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_idx = rm // (OH * OW)
    pix = rm % (OH * OW)
    oh = pix // OW
    ow = pix % OW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    colsum = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for r in range(0, KH):
        for s in range(0, KW):
            ih = oh * SH - PH + r * DH
            iw = ow * SW - PW + s * DW
            inside = (rm < M) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_offsets = ((n_idx * H + ih) * W + iw)[:, None] * N + rn[None, :]
            x = tl.load(x_ptr + x_offsets, mask=inside[:, None] & (rn[None, :] < N), other=0.0)
            if HAS_ZP:
                x = tl.where(inside[:, None], x, x_zp.to(tl.int8))
            w = tl.load(w_ptr + (r * KW + s) * N + rn, mask=rn < N, other=0.0)
            acc += x.to(ACC_TYPE) * w.to(ACC_TYPE)[None, :]
            if HAS_ZP:
                colsum += w.to(tl.int32)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
"""
    + EPILOGUE_TAIL
).replace("ROW_RANGE", index_range("rm", "pid_m", "BLOCK_M", "    "))
# (pixels, channels, warps) per program: each a tactic the builder times.
DEPTHWISE_CONFIGS = [(64, 64, 4), (32, 128, 4), (128, 32, 4), (16, 256, 4)]


def weight_taps_by_channel(layer, weights: dict) -> dict:
    """[C, 1, KH, KW] → [KH * KW, C]: one contiguous row of channels per tap."""
    name = layer.inputs[1]
    w = weights[name]
    return {name: w.reshape(w.shape[0], -1).t().contiguous()}


def qdepthwise_triton(config):
    block_m, block_n, warps = config

    def run(layer, inputs, run_ctx):
        x, w_taps, bias, residual, w_scale = inputs
        a = layer.attrs
        n, c, h, w = x.shape
        kh, kw = a["kernel_size"]
        if w_taps.shape != (kh * kw, c):
            raise ValueError("triton depthwise qconv runs only with the [KH*KW, C] weight its prepare made")
        (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
        oh, ow = output_size(h, ph, dh, kh, sh), output_size(w, pw, dw, kw, sw)
        out = torch.empty((n, oh, ow, c), dtype=output_dtype(layer), device=x.device)
        res = nhwc_rows(residual) if residual is not None else None
        m = n * oh * ow
        source = TEMPLATE.replace("ACC_TYPE", accumulator_type(a["qdtype"]))
        kernel = load_template(source, "qdepthwise_kernel", a, residual_load(a) if res is not None else None)
        grid = (triton.cdiv(m, block_m), triton.cdiv(c, block_n))
        kernel[grid](
            x.contiguous(memory_format=torch.channels_last), w_taps, w_scale, bias if bias is not None else w_scale,
            res if res is not None else out, out, m, c, h, w, oh, ow, sh, sw, ph, pw, dh, dw, kh, kw,
            **epilogue_args(layer, w_scale, bias, residual), WIDE_INDEX=wide_index(x.numel(), out.numel()),
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
        )  # fmt: skip
        return out.permute(0, 3, 1, 2)

    return run


def is_depthwise(layer) -> bool:
    return layer.attrs["groups"] > 1 and layer.attrs.get("depthwise", False)


for _qdtype in ("int8", "fp8"):
    for _config in DEPTHWISE_CONFIGS:
        tactic(
            "qconv",
            f"triton_{_qdtype}_depthwise_{_config[0]}x{_config[1]}",
            when=lambda layer, target, q=_qdtype: applies(layer, target, q) and is_depthwise(layer),
            prepare=weight_taps_by_channel,
        )(qdepthwise_triton(_config))
