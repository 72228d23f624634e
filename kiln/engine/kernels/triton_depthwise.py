"""Depthwise convolutions (one filter per channel) in Triton over NHWC memory, with the epilogue fused.

A depthwise conv does a few multiply-adds per value it reads, so its speed is the speed of
memory. Over NHWC memory a tile of output pixels x channels loads, for each filter tap, a block
of input that is contiguous along the channels. The taps of neighbouring pixels overlap and
come from cache, so the input is read from memory about once. Bias, residual and activation
(triton_epilogue.epilogue) are applied before the only write. EfficientNet's and MobileNet's
depthwise convs, each followed by SiLU or hardswish, are 20 to 30% of their time at large
batches when run through cuDNN and a separate activation pass.

The weight is prepared once as [KH, KW, C], so each tap's weights are contiguous along the
channels too. Low precision only, like every Triton tactic here. Without Triton the tactic is
not offered.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import ACTIVATIONS, nhwc_output, require_low_precision, triton
from kiln.engine.runtime.executor import arena_output

if triton is not None:
    import triton.language as tl

    from kiln.engine.kernels.triton_epilogue import epilogue

    # Sizes that follow the input's shape are not specialised on: a ranged engine's new shape
    # must launch the compiled kernel, not compile another.
    @triton.jit(do_not_specialize=["P", "H", "W", "OH", "OW"])
    def _depthwise(
        x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
        P, C, H, W, OH, OW, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
        KH: tl.constexpr, KW: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # One program: BLOCK_P output pixels (flattened over n, oh, ow) x BLOCK_C channels.
        p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_ok = p < P
        c_ok = c < C
        n = p // (OH * OW)
        rest = p % (OH * OW)
        oh = rest // OW
        ow = rest % OW
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for kh in tl.static_range(KH):
            ih = oh * STRIDE_H - PAD_H + kh * DIL_H
            row_ok = p_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = ow * STRIDE_W - PAD_W + kw * DIL_W
                ok = row_ok & (iw >= 0) & (iw < W)
                pixel = ((n * H + ih) * W + iw) * C
                x = tl.load(x_ptr + pixel[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
                w = tl.load(w_ptr + (kh * KW + kw) * C + c, mask=c_ok, other=0.0)
                acc += x.to(tl.float32) * w.to(tl.float32)[None, :]
        mask = p_ok[:, None] & c_ok[None, :]
        offsets = p[:, None] * C + c[None, :]
        acc = epilogue(acc, bias_ptr, res_ptr, offsets, mask, c, c_ok, HAS_BIAS, HAS_RES, ACT)
        tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


def block_sizes(channels: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps): channel tiles as wide as the channels allow (up to 64), ~4K values a program."""
    block_c = 16 if channels <= 16 else 32 if channels <= 32 else 64
    return 4096 // block_c, block_c, 4


def depthwise(x: torch.Tensor, w_taps: torch.Tensor, bias, residual, attrs: dict, out: torch.Tensor | None = None):
    """act(depthwise_conv(x) + bias + residual); x is [N, C, H, W] (channels-last memory preferred), w_taps [KH, KW, C]."""
    n, c, h, w = x.shape
    if w_taps.dim() != 3 or w_taps.shape[2] != c:
        raise ValueError("triton_depthwise runs only with the [KH, KW, C] weight its prepare made")
    kh, kw = w_taps.shape[:2]
    (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = x.contiguous(memory_format=torch.channels_last)
    out = nhwc_output(out, (n, c, oh, ow), x)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    pixels = n * oh * ow
    block_p, block_c, warps = block_sizes(c)
    grid = (triton.cdiv(pixels, block_p), triton.cdiv(c, block_c))
    _depthwise[grid](
        x, w_taps, bias if bias is not None else x, residual if residual is not None else x, out,
        pixels, c, h, w, oh, ow, sh, sw, ph, pw, dh, dw,
        KH=kh, KW=kw, HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT=ACTIVATIONS[attrs.get("activation")],
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    return out


def _is_depthwise(layer, target) -> bool:
    a = layer.attrs
    return (
        triton is not None
        and target.is_cuda
        and len(a["stride"]) == 2
        and not a["transposed"]
        and a["groups"] > 1
        and a.get("activation") in ACTIVATIONS
    )


def weight_as_taps(layer, weights: dict) -> dict:
    name = layer.inputs[1]
    value = weights.get(name)
    if value is None or value.dim() != 4 or value.shape[1] != 1 or value.shape[0] != layer.attrs["groups"]:
        raise ValueError("triton_depthwise needs a [C, 1, KH, KW] weight (one filter per channel) known at build time")
    return {name: value[:, 0].permute(1, 2, 0).contiguous()}


def conv_depthwise_triton(layer, inputs, run):
    """A `conv` ([x, w, b]) or a `conv_epilogue` ([x, w, b, residual] and an activation)."""
    x, w_taps, b, *residual = inputs
    require_low_precision(x, "triton_depthwise")
    return depthwise(x, w_taps, b, residual[0] if residual else None, layer.attrs, arena_output(run, 0))


for _kind in ("conv", "conv_epilogue"):
    tactic(_kind, "triton_depthwise", when=_is_depthwise, prepare=weight_as_taps)(conv_depthwise_triton)
