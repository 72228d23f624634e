"""A reduction over the last dim whose result is broadcast back over the row, as one generated row kernel.

`F.normalize(x, dim=-1)` is `x / x.norm(dim=-1, keepdim=True).clamp_min(eps).expand_as(x)`: built
as separate layers that is a cast to FP32, the norm, a clamp, an expand and a divide, five kernels
and two passes over x (EdgeNeXt's cross-covariance attention does it to q and k; cosine attention
and CLIP / ArcFace heads do the same). Here a program takes BLOCK_R whole rows (codegen/rows.py),
computes the prologue (the cast), reduces each row with the op's arithmetic from triton_reduce.py's
ACCUMULATE table (the one vocabulary of reductions), rounds the [rows, 1] result to the dtype the
reduce layer made, and runs the epilogue (clamp, then the divide against the row, which Triton
broadcasts as the expand did), so x is read once and the result written once.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.codegen.program import FLOAT_DTYPES
from kiln.engine.kernels.codegen.rows import MAX_ROW, row_kernel_source, run_rows
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_reduction import TAKES, FusedParts, generated_broadcast, run_parts
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_reduce import ACCUMULATE, as_reduction

try:
    import triton
except ImportError:  # a CPU-only install: the tactic is not offered
    triton = None

# The reduce layer's result dtype, where narrower than the FP32 the row is reduced in: rounded as the layer did.
_ROUNDED = {torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16"}


@generated_broadcast("reduce")
def is_last_dim_reduction(attrs: dict, x) -> bool:
    if x is None or x.rank < 1 or x.dtype not in FLOAT_DTYPES:
        return False
    spec = as_reduction("reduce", attrs, x.rank)
    last = x.shape[-1]
    return spec is not None and spec[1] == [x.rank - 1] and spec[2] and isinstance(last, int) and 0 < last <= MAX_ROW


def _applies(layer, target) -> bool:
    a = layer.attrs
    return triton is not None and target.is_cuda and bool(a.get("broadcast")) and a["reduction"]["kind"] == "reduce"


@tactic("fused_reduction", "triton_reduce_rows", when=_applies, takes=TAKES)
def fused_reduce_rows_triton(layer, inputs, run):
    middle_dtype = dtype_from_name(layer.attrs["reduction"]["dtypes"][1])
    return run_parts(layer, inputs, run, lambda parts, planned: reduce_rows(parts, planned, middle_dtype))


def reduce_rows(parts: FusedParts, planned: list, middle_dtype: torch.dtype) -> list[torch.Tensor]:
    rank = len(torch.broadcast_shapes(*(t.shape for t in parts.prologue_inputs)))
    spec = as_reduction(parts.kind, parts.attrs, rank)
    if spec is None or spec[1] != [rank - 1] or not spec[2]:
        raise ValueError(f"triton_reduce_rows takes a reduction over the last dim with keepdim, not {parts.attrs}")
    dtypes = ([t.dtype for t in parts.prologue_inputs], [t.dtype for t in parts.epilogue_inputs], parts.out_dtypes)
    op = spec[0]
    return run_rows(parts, planned, lambda num_leading: _kernel(parts.prologue, parts.epilogue, dtypes, num_leading, op, middle_dtype))


_KERNELS: dict[tuple, object] = {}


def _kernel(prologue, epilogue, dtypes, num_leading: int, op: str, middle_dtype: torch.dtype):
    key = (repr(prologue.to_json()), repr(epilogue.to_json()), *map(tuple, dtypes), num_leading, op, middle_dtype)
    kernel = _KERNELS.get(key)
    if kernel is None:
        source = kernel_source(prologue, epilogue, dtypes, num_leading, op, middle_dtype)
        kernel = _KERNELS[key] = load_kernel(source, "reduce_rows")
    return kernel


def kernel_source(prologue, epilogue, dtypes, num_leading: int, op: str, middle_dtype: torch.dtype) -> str:
    start, fold, finish = ACCUMULATE[op]
    # The looped kernel's fold, applied once to the whole row: `mask` keeps padding lanes out of every op.
    middle = [
        "v = x",
        f"acc = tl.full([BLOCK_R, BLOCK_D], {start}, tl.float32)",
        f"acc = {fold}",
        "NR = D",
        f"y = ({finish.format(axis=1)})[:, None]",
    ]
    if middle_dtype in _ROUNDED:
        middle.append(f"y = y.to({_ROUNDED[middle_dtype]}).to(tl.float32)")
    return row_kernel_source("reduce_rows", "kernels/triton_reduce_rows.py", prologue, epilogue, dtypes, num_leading, "0.0", middle)
