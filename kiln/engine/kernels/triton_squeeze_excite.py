"""A squeeze-excite gate (kernels/squeeze_excite.py) as one generated Triton kernel.

A program owns one image (and, with SPLIT > 1, a share of the gate's channels): it walks the
image's channels BLOCK_C at a time, sums each block over H*W in FP32 (a [BLOCK_C, BLOCK_HW]
tile, read through the input's strides, so NCHW and channels-last are both read where they
lie and Triton's coalescing follows whichever axis is contiguous), and folds the block's means
straight into the first product, h += W1[:, block] @ mean[block], so the means never leave
registers. Then h gets the bias and the first stage's activation chain, and the gate is
produced BLOCK_O channels at a time: W2[block, :] @ h, bias, the second chain, one store.

The activation chains are generated from the op vocabulary (kernels/codegen): whatever the
stage layers fused (SiLU, ReLU, hard-sigmoid, a cast...) is emitted here, never listed.
The hidden vector lives in registers, so the hidden size is capped (MAX_HIDDEN; the pass
leaves wider gates unfused).

Configs (tile size, channel block cap, warps, SPLIT) are separate tactics timed per layer: one
program per image suits large batches; at batch 1 the split one spreads the second product
(its weight is the larger read of late blocks) over several programs, each of which
recomputes the cheap first half from L2.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.codegen.program import emit
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.squeeze_excite import as_matrix, out_shape, stage_program
from kiln.engine.kernels.triton_epilogue import MODULE_HEADER, triton
from kiln.engine.runtime.executor import arena_output

# Widest hidden vector (the first stage's output channels) one program holds.
MAX_HIDDEN = 1024
# Largest weight tile [BLOCK_H, BLOCK_C] or [BLOCK_O, BLOCK_H] a program loads at once.
WEIGHT_TILE = 8192

# name -> (elements of the mean's tile, most channels per block when channels are innermost, warps, SPLIT).
CONFIGS = {
    "triton_squeeze_excite": (4096, 64, 4, 1),
    # One image's whole activation through one SM: the more bytes each iteration has in flight, the sooner done
    # (EfficientNet-B0's first gate reads 32x112x112 values at batch 1).
    "triton_squeeze_excite_wide": (32768, 256, 16, 1),
    "triton_squeeze_excite_split4": (8192, 128, 8, 4),
}


def fits(hidden: int) -> bool:
    return 0 < hidden <= MAX_HIDDEN


def block_sizes(x: torch.Tensor, hidden: int, cout: int, config: tuple) -> dict:
    tile, cmax, _, _ = config
    c, hw = x.shape[1], x.shape[2] * x.shape[3]
    block_h = triton.next_power_of_2(hidden)
    # A channel block is also the width of the first product's weight tile [BLOCK_H, BLOCK_C].
    widest_c = min(triton.next_power_of_2(c), max(16, WEIGHT_TILE // block_h))
    if x.stride(1) < x.stride(3) or hw == 1:  # channels innermost: wide channel blocks coalesce
        block_c = min(widest_c, cmax)
        block_hw = min(triton.next_power_of_2(hw), max(1, tile // block_c))
    else:
        block_hw = min(triton.next_power_of_2(hw), max(16, tile // 16))
        block_c = min(widest_c, max(1, tile // block_hw))
    block_o = min(triton.next_power_of_2(cout), max(16, WEIGHT_TILE // block_h))
    return {"BLOCK_C": block_c, "BLOCK_HW": block_hw, "BLOCK_H": block_h, "BLOCK_O": block_o}


def squeeze_excite(x, w1, b1, w2, b2, programs, out_dtype, shape, config: tuple, out=None) -> torch.Tensor:
    """The gate act2(W2 act1(W1 mean_hw(x) + b1) + b2) of x [N, C, H, W] (any strides), shaped `shape`."""
    w1m, w2m = as_matrix(w1), as_matrix(w2)
    n, c, hgt, wid = x.shape
    hidden, cout = w1m.shape[0], w2m.shape[0]
    if w1m.shape[1] != c or w2m.shape[1] != hidden or not fits(hidden):
        raise ValueError(f"triton_squeeze_excite: weights {tuple(w1.shape)}, {tuple(w2.shape)} do not make a gate of {c} channels")
    if out is None or tuple(out.shape) != tuple(shape) or out.dtype != out_dtype:
        out = torch.empty(shape, dtype=out_dtype, device=x.device)
    if n == 0:
        return out
    _, _, warps, split = config
    blocks = block_sizes(x, hidden, cout, config)
    flat_hw = hgt == 1 or x.stride(2) == wid * x.stride(3)
    kernel = _kernel(programs, x.dtype, w1m.dtype, w2m.dtype, out_dtype)
    kernel[(n, split)](
        x, w1m, b1 if b1 is not None else w1m, w2m, b2 if b2 is not None else w2m, out,
        c, hgt * wid, wid, hidden, cout,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), w1m.stride(0), w1m.stride(1), w2m.stride(0), w2m.stride(1),
        out.stride(0), out.stride(1),
        HAS_B1=b1 is not None, HAS_B2=b2 is not None, FLAT_HW=flat_hw, SPLIT=split, **blocks, num_warps=warps,
    )  # fmt: skip
    return out


def _applies(layer, target) -> bool:
    return triton is not None and target.is_cuda


def _register(name: str, config: tuple) -> None:
    @tactic("squeeze_excite", name, when=_applies)
    def squeeze_excite_triton(layer, inputs, run):
        x, w1, b1, w2, b2 = inputs
        programs = tuple(stage_program(s) for s in layer.attrs["stages"])
        out_dtype = dtype_from_name(layer.attrs["out_dtype"])
        shape = out_shape(layer, x.shape[0], w2.shape[0])
        return squeeze_excite(x, w1, b1, w2, b2, programs, out_dtype, shape, config, arena_output(run, 0))


for _name, _config in CONFIGS.items():
    _register(_name, _config)


_KERNELS: dict[tuple, object] = {}


def _kernel(programs, *dtypes):
    key = (tuple(repr(p.to_json()) for p in programs), dtypes)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = load_kernel(kernel_source(*programs), "squeeze_excite_kernel")
    return kernel


def kernel_source(first, second) -> str:
    """The module text of the gate kernel with the two stages' activation programs (one input: the stage's FP32 value)."""
    act1, (h_out,) = emit(first, ["h"], prefix="act1_v")
    act2, (g_out,) = emit(second, ["g"], prefix="act2_v")
    act1 = "\n".join("    " + line for line in act1)
    act2 = "\n".join("        " + line for line in act2)
    return MODULE_HEADER + f'''
@triton.jit
def squeeze_excite_kernel(
    x, w1, b1, w2, b2, out, C, HW, W, HID, COUT,
    x_sn, x_sc, x_sh, x_sw, w1_s0, w1_s1, w2_s0, w2_s1, out_sn, out_sc,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, FLAT_HW: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_O: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    xrow = x + n * x_sn
    hid = tl.arange(0, BLOCK_H)
    hmask = hid < HID
    h = tl.zeros([BLOCK_H], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < C
        acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_HW):
            ps = p0 + tl.arange(0, BLOCK_HW)
            if FLAT_HW:
                poff = ps.to(tl.int64) * x_sw
            else:
                poff = (ps // W).to(tl.int64) * x_sh + (ps % W).to(tl.int64) * x_sw
            mask = cmask[:, None] & (ps < HW)[None, :]
            acc += tl.load(xrow + cs[:, None].to(tl.int64) * x_sc + poff[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=1) / HW
        wmask = hmask[:, None] & cmask[None, :]
        wt = tl.load(w1 + hid[:, None] * w1_s0 + cs[None, :] * w1_s1, mask=wmask, other=0.0).to(tl.float32)
        h += tl.sum(wt * mean[None, :], axis=1)
    if HAS_B1:
        h += tl.load(b1 + hid, mask=hmask, other=0.0).to(tl.float32)
{act1}
    # Padding lanes must be 0 for the second product, whatever the activation makes of 0.
    h = tl.where(hmask, {h_out}, 0.0)
    for o0 in range(tl.program_id(1) * BLOCK_O, COUT, SPLIT * BLOCK_O):
        oc = o0 + tl.arange(0, BLOCK_O)
        omask = oc < COUT
        wt2 = tl.load(w2 + oc[:, None] * w2_s0 + hid[None, :] * w2_s1, mask=omask[:, None] & hmask[None, :], other=0.0).to(tl.float32)
        g = tl.sum(wt2 * h[None, :], axis=1)
        if HAS_B2:
            g += tl.load(b2 + oc, mask=omask, other=0.0).to(tl.float32)
{act2}
        tl.store(out + n * out_sn + oc * out_sc, {g_out}.to(out.dtype.element_ty), mask=omask)
'''
