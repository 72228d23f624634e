"""Layer and RMS normalisation over the trailing dims as one Triton kernel: several rows per program.

PyTorch's layer_norm kernel gives each row a thread block; with the short rows of vision
models (ConvNeXt's and Swin's 96 to 768 channels, over 400k rows at batch 128) most of each
block idles, and it ran at ~350 GB/s on the H100 (ConvNeXt-T's LayerNorms were a quarter of
its time: docs/benchmarks/2026-11-25-h100-generated-kernels). Here a program takes BLOCK_R
whole rows at once (the row padded to a power of two in registers), reduces each in FP32 and
writes it once, so the kernel moves memory at close to bandwidth whatever the row length.

Rows may sit at any row stride (a permuted NHWC view whose channels are contiguous); the
trailing dims must collapse into one contiguous row, else the input is copied once.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.codegen.rows import MAX_ROW as ROWS_MAX
from kiln.engine.kernels.codegen.rows import row_kernel_source, run_rows
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_reduction import TAKES, UNFUSED_MIDDLE, generated_reduction, split_inputs
from kiln.engine.kernels.registry import tactic
from kiln.engine.runtime.executor import arena_output

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: the tactic is not offered
    triton = None

MAX_ROW = 16384

if triton is not None:

    @triton.jit(do_not_specialize=["R", "row_stride"])
    def _row_norm(
        x_ptr, w_ptr, b_ptr, y_ptr, R, D, row_stride, eps,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < D
        mask = (rows < R)[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if RMS:
            centred = x
        else:
            mean = tl.sum(x, axis=1) / D
            centred = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(centred * centred, axis=1) / D
        y = centred * (1.0 / tl.sqrt_rn(var + eps))[:, None]
        if HAS_W:
            y = y * tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rows[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def _applies(layer, target) -> bool:
    a = layer.attrs
    return triton is not None and target.is_cuda and a.get("type") in ("layer", "rms") and len(layer.outputs) == 1


def row_norm(x: torch.Tensor, weight, bias, normalized: list[int], eps: float | None, rms: bool, out=None) -> torch.Tensor:
    d = 1
    for size in normalized:
        d *= size
    if d > MAX_ROW or d == 0:
        raise ValueError(f"triton_rows normalises rows of at most {MAX_ROW} values, not {d}")
    rows = x.reshape(-1, d)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    r = rows.shape[0]
    if out is None or tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype or not out.is_contiguous():
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if r == 0:
        return out
    block_d = triton.next_power_of_2(d)
    block_r = max(1, min(64, 4096 // block_d))
    warps = 4 if block_d * block_r <= 4096 else 8
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    w = weight.reshape(-1) if weight is not None else rows
    b = bias.reshape(-1) if bias is not None else rows
    _row_norm[(triton.cdiv(r, block_r),)](
        rows, w, b, out, r, d, rows.stride(0), float(eps),
        HAS_W=weight is not None, HAS_B=bias is not None, RMS=rms, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip
    return out


@tactic("norm", "triton_rows", when=_applies)
def norm_rows_triton(layer, inputs, run):
    x, w, b, *_ = inputs
    a = layer.attrs
    rms = a["type"] == "rms"
    return row_norm(x, w, None if rms else b, run.shape(a["shape"]), a.get("eps"), rms, arena_output(run, 0))


UNFUSED_MIDDLE[("norm", "layer")] = UNFUSED_MIDDLE[("norm", "rms")] = norm_rows_triton


# Layer / RMS norm over one last dim with the programs around it (a fused_reduction layer): the same
# rows-per-program shape as above, generated from the whole-row template with the prologue (a residual
# add before a pre-norm) and epilogue (an activation after it) in registers.
@generated_reduction("norm")
def is_row_norm(attrs: dict, x) -> bool:
    shape = attrs.get("shape") or []
    return attrs.get("type") in ("layer", "rms") and len(shape) == 1 and isinstance(shape[0], int) and 0 < shape[0] <= ROWS_MAX


def _applies_fused(layer, target) -> bool:
    r = layer.attrs["reduction"]
    return triton is not None and target.is_cuda and r["kind"] == "norm" and is_row_norm(r["attrs"], None)


@tactic("fused_reduction", "triton_norm_rows", when=_applies_fused, takes=TAKES)
def fused_norm_rows_triton(layer, inputs, run):
    parts = split_inputs(layer, inputs, run)
    a = parts.attrs
    rms = a["type"] == "rms"
    weight, bias = parts.extras[0], None if rms else parts.extras[1]
    affine = (weight is not None, bias is not None)
    eps = a.get("eps")
    if eps is None:  # RMS norm's default: the machine epsilon of what it normalises
        eps = torch.finfo(dtype_from_name(layer.attrs["reduction"]["dtypes"][0])).eps
    dtypes = ([t.dtype for t in parts.prologue_inputs], [t.dtype for t in parts.epilogue_inputs], parts.out_dtypes)

    def kernel_for(num_leading: int):
        key = (repr(parts.prologue.to_json()), repr(parts.epilogue.to_json()), *map(tuple, dtypes), num_leading, rms, affine)
        kernel = _GENERATED.get(key)
        if kernel is None:
            source = fused_norm_source(parts.prologue, parts.epilogue, dtypes, num_leading, rms, affine)
            kernel = _GENERATED[key] = load_kernel(source, "norm_rows")
        return kernel

    vectors = [t.reshape(-1).contiguous() for t in (weight, bias) if t is not None]
    outs = run_rows(parts, [arena_output(run, i) for i in range(len(parts.out_dtypes))], kernel_for, [*vectors, float(eps)])
    return outs[0] if len(outs) == 1 else tuple(outs)


_GENERATED: dict[tuple, object] = {}


def row_norm_lines(rms: bool, affine: tuple[bool, bool]) -> tuple[list[str], list[str]]:
    """A layer / RMS norm of each row of a [rows, BLOCK_D] FP32 tile, as Triton statements, and the pointer
    parameters they read (then `eps`). They read `x` (zero in padding lanes), `mask`, `cols` and `D`, and leave
    the result in `y`: every template that normalises rows in registers (the whole-row reductions here, the
    depthwise conv + norm of triton_depthwise_norm.py) takes its arithmetic from this one place."""
    middle = ["centred = x"] if rms else ["mean = tl.sum(x, axis=1) / D", "centred = tl.where(mask, x - mean[:, None], 0.0)"]
    middle += ["var = tl.sum(centred * centred, axis=1) / D", "y = centred * (1.0 / tl.sqrt_rn(var + eps))[:, None]"]
    params = []
    for name, op, present in (("weight", "*", affine[0]), ("bias", "+", affine[1])):
        if present:
            params.append(name)
            middle.append(f"y = y {op} tl.load({name} + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]")
    return middle, params


def fused_norm_source(prologue, epilogue, dtypes, num_leading: int, rms: bool, affine: tuple[bool, bool]) -> str:
    middle, params = row_norm_lines(rms, affine)
    origin = "kernels/triton_norm.py"
    return row_kernel_source("norm_rows", origin, prologue, epilogue, dtypes, num_leading, "0.0", middle, [*params, "eps"])
