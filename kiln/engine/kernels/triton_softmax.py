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

from kiln.engine.kernels.codegen.rows import MAX_ROW, row_kernel_source, run_rows
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_reduction import TAKES, FusedParts, generated_reduction, run_parts
from kiln.engine.kernels.registry import tactic

try:
    import triton
except ImportError:  # a CPU-only install: the tactics are not offered
    triton = None


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
    return run_parts(layer, inputs, run, row_softmax)


def row_softmax(parts: FusedParts, planned: list) -> list[torch.Tensor]:
    rank = len(torch.broadcast_shapes(*(t.shape for t in parts.prologue_inputs)))
    if parts.attrs["dim"] not in (-1, rank - 1):
        raise ValueError(f"triton_softmax_rows takes softmax over the last dim, not dim {parts.attrs['dim']}")
    dtypes = ([t.dtype for t in parts.prologue_inputs], [t.dtype for t in parts.epilogue_inputs], parts.out_dtypes)
    log = parts.attrs["op"] == "log_softmax"
    return run_rows(parts, planned, lambda num_leading: _kernel(parts.prologue, parts.epilogue, *dtypes, num_leading, log))


_KERNELS: dict[tuple, object] = {}


def _kernel(prologue, epilogue, in_dtypes, epi_dtypes, out_dtypes, num_leading: int, log: bool):
    key = (repr(prologue.to_json()), repr(epilogue.to_json()), tuple(in_dtypes), tuple(epi_dtypes), tuple(out_dtypes), num_leading, log)
    kernel = _KERNELS.get(key)
    if kernel is None:
        source = kernel_source(prologue, epilogue, in_dtypes, epi_dtypes, out_dtypes, num_leading, log)
        kernel = _KERNELS[key] = load_kernel(source, "softmax_rows")
    return kernel


def kernel_source(prologue, epilogue, in_dtypes, epi_dtypes, out_dtypes, num_leading: int, log: bool) -> str:
    middle = [
        "top = tl.max(x, axis=1)",
        "e = tl.exp(x - top[:, None])",
        "total = tl.sum(e, axis=1)",
        "y = x - top[:, None] - tl.log(total)[:, None]" if log else "y = e / total[:, None]",
    ]
    # Padding is a finite lowest value: it vanishes in exp like -inf, yet a padding row makes no NaN.
    dtypes = (in_dtypes, epi_dtypes, out_dtypes)
    return row_kernel_source("softmax_rows", "kernels/triton_softmax.py", prologue, epilogue, dtypes, num_leading, "-3.0e38", middle)
