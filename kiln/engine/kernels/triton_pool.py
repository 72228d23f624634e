"""Max and average 2-D pooling over channels-last (NHWC) activations, in Triton.

A program takes BLOCK_P output pixels by BLOCK_C channels; each window tap is one load of
BLOCK_C contiguous channels per pixel, so the input is read about once whatever the window.
ATen's channels-last max pool was resnet50's single slowest layer at batch 128 on the H100
(0.43 ms, 10% of the engine, for a 3x3/2 window over 128x64x112x112: about 140 GB/s), and
PoolFormer is made of 3x3/1 average pools.

What it computes is PyTorch's: windows by kernel, stride, padding, dilation (max) and
ceil_mode; max ignores padding; the average divides by divisor_override, else by the window
clipped to the padded input (count_include_pad) or to the input. The output shape comes
from PyTorch's own shape function on a meta tensor, so ceil_mode's edge rules are PyTorch's.
Sums are in FP32. The reference tactic (F.max_pool2d / F.avg_pool2d) is the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import nhwc_output
from kiln.engine.runtime.executor import arena_output

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: the tactic is not offered
    triton = None

if triton is not None:

    @triton.jit(do_not_specialize=["pixels"])
    def _pool_nhwc(
        x_ptr, y_ptr, pixels, C, H, W, OH, OW, SH, SW, PH, PW, DH, DW, divisor,
        KH: tl.constexpr, KW: tl.constexpr, IS_MAX: tl.constexpr, INCLUDE_PAD: tl.constexpr, HAS_DIVISOR: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < C
        n = p // (OH * OW)
        rest = p % (OH * OW)
        oh = rest // OW
        ow = rest % OW
        h0 = oh * SH - PH
        w0 = ow * SW - PW
        if IS_MAX:
            acc = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
        else:
            acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        for r in tl.static_range(KH):
            for s in tl.static_range(KW):
                ih = h0 + r * DH
                iw = w0 + s * DW
                ok = (p < pixels) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                offsets = (((n * H + ih) * W + iw) * C)[:, None] + c[None, :]
                mask = ok[:, None] & c_ok[None, :]
                if IS_MAX:
                    v = tl.load(x_ptr + offsets, mask=mask, other=float("-inf")).to(tl.float32)
                    acc = tl.maximum(acc, v)
                else:
                    acc += tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if not IS_MAX:
            if HAS_DIVISOR:
                acc = acc / divisor
            else:
                # PyTorch's divisor: the window clipped to the padded input, or to the input itself.
                h_end = tl.minimum(h0 + KH, H + PH)
                w_end = tl.minimum(w0 + KW, W + PW)
                if INCLUDE_PAD:
                    count = (h_end - h0) * (w_end - w0)
                else:
                    count = (tl.minimum(h_end, H) - tl.maximum(h0, 0)) * (tl.minimum(w_end, W) - tl.maximum(w0, 0))
                acc = acc / tl.maximum(count, 1).to(tl.float32)[:, None]
        out_offsets = (p * C)[:, None] + c[None, :]
        tl.store(y_ptr + out_offsets, acc.to(y_ptr.dtype.element_ty), mask=(p < pixels)[:, None] & c_ok[None, :])


def _applies(layer, target) -> bool:
    return triton is not None and target.is_cuda and layer.attrs.get("op") in ("max", "avg") and len(layer.outputs) >= 1


def output_shape(x: torch.Tensor, attrs: dict) -> tuple[int, ...]:
    meta = torch.empty(x.shape, device="meta", dtype=x.dtype)
    if attrs["op"] == "max":
        y = F.max_pool2d(meta, attrs["kernel"], attrs["stride"], attrs["padding"], attrs["dilation"], attrs["ceil_mode"])
    else:
        y = F.avg_pool2d(meta, attrs["kernel"], attrs["stride"], attrs["padding"], attrs["ceil_mode"], attrs["count_include_pad"])
    return tuple(y.shape)


def pool_nhwc(x: torch.Tensor, attrs: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"triton_pool_nhwc takes floating [N, C, H, W] inputs, not {x.dtype} of rank {x.dim()}")
    if not x.permute(0, 2, 3, 1).is_contiguous():
        # Layouts never change results: a producer whose kernel does not keep the planned layout (seen with
        # poolformer's group norm on the H100) may hand NCHW memory here, so transpose rather than refuse.
        x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    shape = output_shape(x, attrs)
    out = nhwc_output(out, shape, x)
    _, _, oh, ow = shape
    pixels = n * oh * ow
    if pixels == 0 or c == 0:
        return out
    kh, kw = attrs["kernel"]
    (sh, sw), (ph, pw) = attrs["stride"], attrs["padding"]
    dh, dw = attrs.get("dilation", [1, 1])
    divisor = attrs.get("divisor_override")
    block_c = 16 if c <= 16 else 32 if c <= 32 else 64
    block_p = 2048 // block_c
    grid = (triton.cdiv(pixels, block_p), triton.cdiv(c, block_c))
    _pool_nhwc[grid](
        x, out, pixels, c, h, w, oh, ow, sh, sw, ph, pw, dh, dw, float(divisor or 1),
        KH=kh, KW=kw, IS_MAX=attrs["op"] == "max", INCLUDE_PAD=bool(attrs.get("count_include_pad", True)),
        HAS_DIVISOR=bool(divisor), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return out


@tactic("pool", "triton_pool_nhwc", when=_applies)
def pool_triton(layer, inputs, run):
    return pool_nhwc(inputs[0], layer.attrs, arena_output(run, 0))
