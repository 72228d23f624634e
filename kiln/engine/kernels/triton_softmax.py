"""Softmax / log_softmax over the last dim as one generated Triton kernel, with the programs around it.

Attention outside the fused attention layer (Swin's windows: scores + relative-position bias,
then softmax) costs an add kernel, a softmax kernel and their round trips through memory. Here
a program takes BLOCK_R whole rows (the row padded to a power of two in registers), computes
the prologue (the bias add, a scale) per element, the row max and sum in FP32, the epilogue on
the result, and writes each row once. Every tensor is read through its strides over the
output's dims, so the bias broadcast over the batch of windows is read in place.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.strided import HEADER, dtypes_comment, emit_loaded, expanded_strides, store, stride_params
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_reduction import TAKES, FusedParts, generated_reduction, split_inputs
from kiln.engine.kernels.registry import tactic
from kiln.engine.runtime.executor import arena_output

try:
    import triton
except ImportError:  # a CPU-only install: the tactics are not offered
    triton = None

MAX_ROW = 8192


# Only fused layers get this kernel: fusion checks the row is static and short enough; a plain
# softmax keeps ATen's kernels, which also take rows of any length.
@generated_reduction("softmax")
def is_row_softmax(attrs: dict, x) -> bool:
    last = x.shape[-1] if x.rank else None
    return x.rank >= 1 and attrs["dim"] in (-1, x.rank - 1) and isinstance(last, int) and 0 < last <= MAX_ROW


def _applies_fused(layer, target) -> bool:
    r = layer.attrs["reduction"]
    return triton is not None and target.is_cuda and r["kind"] == "softmax"


@tactic("fused_reduction", "triton_softmax_rows", when=_applies_fused, takes=TAKES)
def fused_softmax_triton(layer, inputs, run):
    parts = split_inputs(layer, inputs)
    outs = row_softmax(parts, [arena_output(run, i) for i in range(len(parts.out_dtypes))])
    return outs[0] if len(outs) == 1 else tuple(outs)


def row_softmax(parts: FusedParts, planned: list) -> list[torch.Tensor]:
    shape = list(torch.broadcast_shapes(*(t.shape for t in parts.prologue_inputs)))
    if not shape or parts.attrs["dim"] not in (-1, len(shape) - 1) or not 0 < shape[-1] <= MAX_ROW:
        raise ValueError(f"triton_softmax_rows takes softmax over a last dim of at most {MAX_ROW} values, not {shape}")
    template = max(parts.prologue_inputs, key=lambda t: (list(t.shape) == shape, t.numel()))
    outs = []
    for dtype, buf in zip(parts.out_dtypes, planned):
        if buf is None or list(buf.shape) != shape or buf.dtype != dtype:
            buf = torch.empty(shape, dtype=dtype, device=template.device)
        outs.append(buf)
    d = shape[-1]
    rows = outs[0].numel() // d
    if rows == 0:
        return outs
    leading = shape[:-1]
    kernel = _kernel(
        parts.prologue, parts.epilogue, [t.dtype for t in parts.prologue_inputs], [t.dtype for t in parts.epilogue_inputs],
        [o.dtype for o in outs], len(leading), parts.attrs["op"] == "log_softmax",
    )  # fmt: skip
    tensors = [*parts.prologue_inputs, *parts.epilogue_inputs, *outs]
    strides = [s for t in tensors for s in expanded_strides(t, shape)]
    block_d = triton.next_power_of_2(d)
    block_r = max(1, min(64, 4096 // block_d))
    warps = 4 if block_d * block_r <= 4096 else 8
    kernel[(triton.cdiv(rows, block_r),)](*tensors, rows, d, *leading, *strides, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    return outs


_KERNELS: dict[tuple, object] = {}


def _kernel(prologue, epilogue, in_dtypes, epi_dtypes, out_dtypes, num_leading: int, log: bool):
    key = (repr(prologue.to_json()), repr(epilogue.to_json()), tuple(in_dtypes), tuple(epi_dtypes), tuple(out_dtypes), num_leading, log)
    kernel = _KERNELS.get(key)
    if kernel is None:
        source = kernel_source(prologue, epilogue, in_dtypes, epi_dtypes, out_dtypes, num_leading, log)
        kernel = _KERNELS[key] = load_kernel(source, "softmax_rows")
    return kernel


def kernel_source(prologue, epilogue, in_dtypes, epi_dtypes, out_dtypes, num_leading: int, log: bool) -> str:
    ins = [f"pin{i}" for i in range(len(in_dtypes))]
    epis = [f"ein{i}" for i in range(len(epi_dtypes))]
    outs = [f"out{i}" for i in range(len(out_dtypes))]
    rank = num_leading + 1
    sizes = [f"L{d}" for d in range(num_leading)]
    strides = [s for name in (*ins, *epis, *outs) for s in stride_params(name, rank)]
    signature = ", ".join([*ins, *epis, *outs, "R", "D", *sizes, *strides, "BLOCK_R: tl.constexpr", "BLOCK_D: tl.constexpr"])
    axes = [f"i{d}[:, None]" for d in range(num_leading)] + ["cols[None, :]"]
    body = [
        "rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)",
        "cols = tl.arange(0, BLOCK_D)",
        "mask = (rows < R)[:, None] & (cols < D)[None, :]",
        "rest = rows.to(tl.int64)",
    ]
    for d in reversed(range(num_leading)):
        body += [f"i{d} = rest % L{d}", f"rest = rest // L{d}"] if d else ["i0 = rest"]
    pro_lines, pro_results = emit_loaded(prologue, ins, in_dtypes, axes, "mask", "p")
    body += pro_lines
    body += [
        # Padding is a finite lowest value: it vanishes in exp like -inf, yet a padding row makes no NaN.
        f"x = tl.where(mask, {pro_results[0]}.to(tl.float32), -3.0e38)",
        "top = tl.max(x, axis=1)",
        "e = tl.exp(x - top[:, None])",
        "total = tl.sum(e, axis=1)",
        "y = x - top[:, None] - tl.log(total)[:, None]" if log else "y = e / total[:, None]",
    ]
    epi_lines, epi_results = emit_loaded(epilogue, epis, epi_dtypes, axes, "mask", "e", first="y")
    body += epi_lines
    body.append(store("out0", out_dtypes[0], axes, epi_results[0], "mask"))
    body += [store(name, dtype, axes, value, "mask") for name, dtype, value in zip(outs[1:], out_dtypes[1:], pro_results[1:])]
    text = "\n".join("    " + line for line in body)
    return dtypes_comment("kernels/triton_softmax.py", [*in_dtypes, *epi_dtypes, *out_dtypes]) + HEADER + (
        f"@triton.jit\ndef softmax_rows({signature}):\n{text}\n"
    )
