"""INT8 and FP8 convolution in Triton: implicit GEMM over NHWC, for qconv with groups=1 (any kernel size,
stride, padding, dilation).

The implicit-GEMM indexing (rows are output pixels, columns filter taps with channels fastest, a flat
loop over (tap, channel block) steps for wide inputs and over one flat K for narrow ones) is rendered
from codegen/implicit_gemm.py, the text the FP16/BF16 template (triton_conv.py) renders from too. Taps
that fall in the padding read the activation zero point (the quantized value of 0.0), so the
zero-point compensation of the integer accumulator stays exact at the borders. Then the shared
8-bit tail (triton_quantized_common) before the single write of the NHWC output.
Grouped and depthwise qconvs run on the reference tactic (cuDNN FP32 on exact integers).
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.implicit_gemm import main_loop, output_size, pixel_rows, weight_n_by_taps
from kiln.engine.kernels.codegen.tiles import grouped_tile, index_range, tile_count, wide_index
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import load_template, nhwc_rows
from kiln.engine.kernels.triton_quantized_common import (
    EPILOGUE_TAIL,
    TILE_CONFIGS,
    accumulator_type,
    applies,
    epilogue_args,
    output_dtype,
    residual_load,
)
from kiln.engine.kernels.triton_quantized_gemm import is_pointwise_qconv

TEMPLATE = (
    (
        """
@triton.jit(do_not_specialize=["M", "x_zp"])
def qconv_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, res_ptr, c_ptr, M, N, K,
    H, W, C, OH, OW, SH, SW, PH, PW, DH, DW, KH, KW,
    x_scale, x_zp, out_inv_scale, out_qmin, out_qmax, res_scale, res_zp,
    HAS_ZP: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_MODE: tl.constexpr, OUT_ZP: tl.constexpr,
    TAP_LOOP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WIDE_INDEX: tl.constexpr,
):
    tile = tl.program_id(0)
GROUPED_TILE
ROW_RANGE
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
PIXEL_ROWS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    colsum = tl.zeros((BLOCK_N,), dtype=tl.int32)
MAIN_LOOP
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
"""
        + EPILOGUE_TAIL
    )
    .replace("GROUPED_TILE", grouped_tile("    "))
    .replace("ROW_RANGE", index_range("rm", "pid_m", "BLOCK_M", "    "))
    .replace("PIXEL_ROWS", pixel_rows("    "))
    .replace(
        "MAIN_LOOP",
        main_loop(
            "    ",
            "acc = tl.dot(a, b, acc, out_dtype=ACC_TYPE)",
            # Taps in the padding read the activation zero point (the quantized 0.0), so the
            # zero-point compensation below stays exact at the borders.
            after_a=lambda inside: ["if HAS_ZP:", f"    a = tl.where({inside}, a, x_zp.to(tl.int8))"],
            after_dot=["if HAS_ZP:", "    colsum += tl.sum(b.to(tl.int32), axis=0)"],
        ),
    )
)


def qconv_nhwc(layer, x: torch.Tensor, w_taps: torch.Tensor, bias, residual, w_scale, config) -> torch.Tensor:
    a = layer.attrs
    n, c, h, w = x.shape
    kh, kw = layer_kernel_size(layer, w_taps, c)
    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    oh, ow = output_size(h, ph, dh, kh, sh), output_size(w, pw, dw, kw, sw)
    cout = w_taps.shape[0]
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty((n, oh, ow, cout), dtype=output_dtype(layer), device=x.device)
    res = nhwc_rows(residual) if residual is not None else None
    m, k = n * oh * ow, w_taps.shape[1]
    block_m, block_n, block_k, warps, stages = config
    grid = (tile_count(m, cout, block_m, block_n),)
    source = TEMPLATE.replace("ACC_TYPE", accumulator_type(a["qdtype"]))
    kernel = load_template(source, "qconv_kernel", a, residual_load(a) if res is not None else None)
    kernel[grid](
        x_nhwc, w_taps, w_scale, bias if bias is not None else w_scale, res if res is not None else out, out, m, cout, k,
        h, w, c, oh, ow, sh, sw, ph, pw, dh, dw, kh, kw,
        **epilogue_args(layer, w_scale, bias, residual), TAP_LOOP=c >= block_k // 2,
        WIDE_INDEX=wide_index(x_nhwc.numel(), out.numel(), w_taps.numel()),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out.permute(0, 3, 1, 2)


def layer_kernel_size(layer, w_taps: torch.Tensor, cin: int) -> tuple[int, int]:
    kh, kw = layer.attrs["kernel_size"]
    if w_taps.dim() != 2 or w_taps.shape[1] != kh * kw * cin:
        raise ValueError("triton qconv runs only with the [Cout, KH*KW*Cin] weight its prepare made")
    return kh, kw


def qconv_triton(config):
    def run(layer, inputs, run_ctx):
        x, w_taps, bias, residual, w_scale = inputs
        return qconv_nhwc(layer, x, w_taps, bias, residual, w_scale, config)

    return run


def _applies(layer, target, qdtype: str) -> bool:
    return applies(layer, target, qdtype) and layer.attrs["groups"] == 1 and not is_pointwise_qconv(layer)


for _qdtype in ("int8", "fp8"):
    for _config in TILE_CONFIGS:
        tactic(
            "qconv",
            f"triton_{_qdtype}_conv_kmajor_{_config[0]}x{_config[1]}x{_config[2]}",  # see triton_quantized_gemm._name
            when=lambda layer, target, q=_qdtype: _applies(layer, target, q),
            prepare=weight_n_by_taps,
        )(qconv_triton(_config))
