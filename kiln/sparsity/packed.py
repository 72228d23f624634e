"""The stored form of a 2:4 weight: one byte tensor that serves both the sparse kernel and a dense fallback.

    [ kept values: rows x cols/2 of dtype | positions: one byte per group of four | pad to 256 B |
      the kernel's own form: cuSPARSELt's compressed matrix (torch._cslt_compress), when built on
      a GPU that has it, or CUTLASS's values and metadata (kernels/sparse_gemm_cutlass.py) ]

cuSPARSELt's compressed layout is opaque (its metadata order is the library's business), so
it cannot be turned back into the dense weight without a sparse-capable GPU. The first two
segments are Kiln's own documented layout (two 2-bit positions per group: `first | second << 2`),
from which the dense pruned weight is rebuilt with one scatter on any device. That is what
lets a saved sparse engine run, dense and correct, on a GPU without sparse tensor cores or on
the CPU, at a cost in bytes: 2.375 per FP16 weight element (values 1, positions 0.25,
cuSPARSELt's matrix 1.125), about twice the compressed matrix alone and ~20% more than the
dense weight.
"""

from __future__ import annotations

import torch

from kiln.sparsity.pattern import GROUP, KEPT

ALIGN = 256
# cuSPARSELt's compressed matrix holds numel * 9 / 16 elements for 16-bit types (values + metadata):
# see torch's _cslt_compress.
CSLT_NUMERATOR = 9
CSLT_DENOMINATOR = 16


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def portable_bytes(rows: int, cols: int, dtype: torch.dtype) -> int:
    """Bytes of the values and positions segments, padded so the compressed segment starts aligned."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return _round_up(rows * cols // 2 * itemsize + rows * cols // GROUP, ALIGN)


def cslt_numel(rows: int, cols: int) -> int:
    return rows * cols * CSLT_NUMERATOR // CSLT_DENOMINATOR


def pack_2to4(matrix: torch.Tensor, compressed: torch.Tensor | None = None, *, extra: torch.Tensor | None = None) -> torch.Tensor:
    """The byte tensor for a [rows, cols] 2:4 matrix (cols a multiple of 4), then cuSPARSELt's compressed form or `extra` bytes."""
    rows, cols = matrix.shape
    if cols % GROUP:
        raise ValueError(f"a packed 2:4 weight needs a reduction dim that is a multiple of {GROUP}, got {cols}")
    groups = matrix.reshape(rows, cols // GROUP, GROUP)
    order = torch.arange(GROUP, device=matrix.device)
    # The two non-zero positions of each group, lowest first; a group with fewer non-zeros takes zeros to make two.
    score = (groups != 0).to(torch.int32) * GROUP * 2 - order
    positions = torch.topk(score, KEPT, dim=-1).indices.sort(dim=-1).values
    values = torch.gather(groups, 2, positions)
    if (values != 0).sum() != (matrix != 0).sum():
        raise ValueError("pack_2to4: the matrix is not 2:4 along its last dim")
    codes = (positions[..., 0] | (positions[..., 1] << 2)).to(torch.uint8)
    body = [values.contiguous().view(torch.uint8).reshape(-1), codes.reshape(-1)]
    pad = portable_bytes(rows, cols, matrix.dtype) - sum(t.numel() for t in body)
    body.append(torch.zeros(pad, dtype=torch.uint8, device=matrix.device))
    if compressed is not None:
        if compressed.numel() != cslt_numel(rows, cols) or compressed.dtype != matrix.dtype:
            expected = f"{cslt_numel(rows, cols)} {matrix.dtype}"
            raise ValueError(f"compressed matrix of {compressed.numel()} {compressed.dtype}, expected {expected}")
        body.append(compressed.contiguous().view(torch.uint8).reshape(-1))
    elif extra is not None:
        body.append(extra.contiguous().view(torch.uint8).reshape(-1))
    return torch.cat(body)


def unpack_dense(packed: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """The dense [rows, cols] pruned matrix, rebuilt from the portable segments (any device)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    groups = cols // GROUP
    value_bytes = rows * cols // 2 * itemsize
    values = packed[:value_bytes].view(dtype).reshape(rows, groups, KEPT)
    codes = packed[value_bytes : value_bytes + rows * groups].reshape(rows, groups).to(torch.int64)
    positions = torch.stack([codes & 3, (codes >> 2) & 3], dim=-1)
    dense = torch.zeros(rows, groups, GROUP, dtype=dtype, device=packed.device)
    return dense.scatter_(2, positions, values).reshape(rows, cols)


def tail_bytes(packed: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The bytes after the portable segments (a view, 256-byte aligned), or None if there are none."""
    start = portable_bytes(rows, cols, dtype)
    return packed[start:] if packed.numel() > start else None


def compressed_segment(packed: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor | None:
    """cuSPARSELt's compressed matrix inside `packed` (a view, no copy), or None if it was packed without one."""
    tail = tail_bytes(packed, rows, cols, dtype)
    return tail.view(dtype) if tail is not None else None
