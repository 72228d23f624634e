"""The stored form of a 2:4 weight: one byte tensor that serves both the sparse kernel and a dense fallback.

    [ kept values: rows x cols/2 of dtype | positions: one byte per group of four | pad to 256 B |
      the kernel's own form: cuSPARSELt's compressed matrix (torch._cslt_compress), when built on
      a GPU that has it, or CUTLASS's values and metadata (kernels/sparse_gemm_cutlass.py) ]

cuSPARSELt's compressed layout is opaque (its metadata order is the library's business), so
it cannot be turned back into the dense weight without a sparse-capable GPU. The first two
segments are Kiln's own documented layout (two 2-bit positions per group: `first | second << 2`),
from which the dense pruned weight is rebuilt with one scatter on any device. That is what
lets a saved sparse engine run, dense and correct, on a GPU without sparse tensor cores or on
the CPU, at a cost in bytes: about 2.375 per FP16 weight element (values 1, positions 0.25,
cuSPARSELt's matrix about 1.125), about twice the compressed matrix alone and ~20% more than
the dense weight.

The compressed segment is stored as bytes, but cuSPARSELt wants it back as the tensor
torch._cslt_compress returned: same dtype, same shape. In the releases Kiln runs on (2.11,
2.13) that is 2-D, [rows, S] with S = ceil(cuSPARSELt's compressed size / (rows * itemsize)), and
torch._cslt_sparse_mm reads the weight's row count from its dim 0 (it asserts
`compressed_A.dim() == 2`); older releases returned a 1-D tensor of rows * cols * 9 / 16
elements and derived the rows from its numel. The tactic records the returned shape in the
layer's attrs (`cslt_shape`) and compressed_segment views the bytes back to it.
"""

from __future__ import annotations

import math

import torch

from kiln.errors import CorruptFileError
from kiln.sparsity.pattern import GROUP, KEPT

ALIGN = 256


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def portable_bytes(rows: int, cols: int, dtype: torch.dtype) -> int:
    """Bytes of the values and positions segments, padded so the compressed segment starts aligned."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return _round_up(rows * cols // 2 * itemsize + rows * cols // GROUP, ALIGN)


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
        check_compressed(compressed, rows, cols, matrix.dtype)
        body.append(compressed.contiguous().view(torch.uint8).reshape(-1))
    elif extra is not None:
        body.append(extra.contiguous().view(torch.uint8).reshape(-1))
    return torch.cat(body)


def check_compressed(compressed: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> None:
    """Raise unless `compressed` can be torch._cslt_compress's output for a [rows, cols] matrix of `dtype`.

    Its exact size is cuSPARSELt's business (values plus metadata, ~9/16 of the dense elements for
    16-bit types): only what every release keeps is checked, the dtype, room for the kept values,
    and, when 2-D, one row per matrix row."""
    problems = []
    if compressed.dtype != dtype:
        problems.append(f"dtype {compressed.dtype}, not the matrix's {dtype}")
    if compressed.dim() not in (1, 2) or (compressed.dim() == 2 and compressed.shape[0] != rows):
        problems.append(f"shape {list(compressed.shape)}, neither 1-D nor [{rows}, S]")
    if compressed.numel() < rows * cols // 2:
        problems.append(f"{compressed.numel()} elements, fewer than the {rows * cols // 2} kept values")
    if problems:
        raise ValueError(f"not a cuSPARSELt compressed form of a {rows}x{cols} 2:4 matrix: {'; '.join(problems)}")


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


def compressed_segment(
    packed: torch.Tensor, rows: int, cols: int, dtype: torch.dtype, shape: list[int] | tuple[int, ...] | None = None
) -> torch.Tensor | None:
    """cuSPARSELt's compressed matrix inside `packed`, as the `shape` torch._cslt_compress returned (a view, no copy).

    None if it was packed without one. Without a recorded `shape` (a plan saved before Kiln kept
    it) it is [rows, S]: what every torch that asserts a 2-D operand returns, and a shape the older
    ones accept too, since they only read its numel."""
    tail = tail_bytes(packed, rows, cols, dtype)
    if tail is None:
        return None
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = tail.numel() // itemsize
    if shape is None:
        shape = [rows, numel // rows]
    shape = [int(d) for d in shape]
    if tail.numel() % itemsize or math.prod(shape) != numel or (len(shape) == 2 and shape[0] != rows):
        raise CorruptFileError(
            f"the 2:4 weight ({rows}x{cols} {dtype}) holds {tail.numel()} bytes of cuSPARSELt's compressed matrix, "
            f"which do not make the recorded shape {shape}: the file is damaged, or was written by another Kiln. "
            "Compile the model again."
        )
    # .view, never .reshape: the kernel must read these very bytes, and the tail is one contiguous run.
    return tail.view(dtype).view(shape)
