"""2:4 sparse GEMMs through PyTorch's CUTLASS kernels: the second sparse tactic, for compute capability 8.x.

`torch.sparse.to_sparse_semi_structured` has two backends: cuSPARSELt (kernels/sparse_gemm.py)
and CUTLASS, whose kernels PyTorch builds for compute capability 8.x only (A100, A10, L4,
RTX 30xx/40xx; not Hopper). Where both run, the builder times both beside the dense tactics;
where cuSPARSELt is missing from the torch build, this one still gives the sparse speed-up.

The weight is stored as kiln.sparsity.packed's byte tensor whose tail is CUTLASS's kept values
[rows, cols/2] and reordered metadata [rows, cols/16] (int16), made by the same conversion
`SparseSemiStructuredTensorCUTLASS.from_dense` uses, so it can be prepared anywhere. The GEMM
is `torch._sparse_semi_structured_linear(rows, values, meta, bias=...)`. PyTorch's CUTLASS
wrapper needs the weight's rows a multiple of 32 and its reduction a multiple of 64 for 16-bit
types (stricter than cuSPARSELt's 16), and pads the dense operand's rows to 8, as here.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.sparse_gemm import ROW_MULTIPLE, dense_fallback, register_2to4_tactics
from kiln.engine.optimize.sparse_weights import AS_MATRIX, SPARSE_ATTR
from kiln.sparsity.packed import pack_2to4, tail_bytes

NAME = "cutlass_2to4"
# (rows, reduction) multiples of torch.sparse.SparseSemiStructuredTensorCUTLASS for FP16/BF16.
ROWS_MULTIPLE, COLS_MULTIPLE = 32, 64
META_GROUP = 16  # one int16 of metadata per 16 reduction elements of a row


@functools.cache
def cutlass_sparse(device: torch.device) -> bool:
    """PyTorch's CUTLASS sparse kernels run here: a CUDA device of compute capability 8.x."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] == 8


def _offered(layer, target) -> bool:
    info = layer.attrs.get(SPARSE_ATTR)
    if info is None or info.get("reason") is not None:
        return False
    if info["rows"] % ROWS_MULTIPLE or info["cols"] % COLS_MULTIPLE:
        return False
    # Off the 8.x GPUs a loaded plan is re-targeted (builder/retarget.py) through the shared unprepare.
    return target.is_cuda and cutlass_sparse(target.device)


def _prepare(layer, weights: dict) -> dict:
    name = layer.inputs[1]
    matrix = AS_MATRIX[layer.kind](weights[name]).contiguous()
    values, meta = sparse_semi_structured_from_dense_cutlass(matrix)
    return {name: pack_2to4(matrix, extra=torch.cat([values.reshape(-1).view(torch.uint8), meta.reshape(-1).view(torch.uint8)]))}


def cutlass_parts(packed: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """CUTLASS's (values [rows, cols/2], metadata [rows, cols/16] int16) inside `packed` (views), or None."""
    tail = tail_bytes(packed, rows, cols, dtype)
    if tail is None:
        return None
    value_bytes = rows * cols // 2 * torch.empty((), dtype=dtype).element_size()
    values = tail[:value_bytes].view(dtype).view(rows, cols // 2)
    meta = tail[value_bytes:].view(torch.int16).view(rows, cols // META_GROUP)
    return values, meta


def cutlass_rows_matmul(layer, rows: torch.Tensor, packed: torch.Tensor, bias) -> torch.Tensor:
    """rows [M, K] @ W^T (+ bias) -> [M, N] through CUTLASS's sparse GEMM, or densely where it cannot run."""
    info = layer.attrs[SPARSE_ATTR]
    if not cutlass_sparse(rows.device):
        return dense_fallback(layer, rows, packed, bias, f"{rows.device} cannot run PyTorch's CUTLASS sparse kernels (8.x only)")
    parts = cutlass_parts(packed, info["rows"], info["cols"], dtype_from_name(info["dtype"]))
    if parts is None:
        return dense_fallback(layer, rows, packed, bias, "its weight was packed without CUTLASS's form")
    values, meta = parts
    m = rows.shape[0]
    pad = (-m) % ROW_MULTIPLE
    rows = F.pad(rows, (0, 0, 0, pad)) if pad else rows.contiguous()
    out = torch._sparse_semi_structured_linear(rows, values, meta, bias=bias)
    return out[:m] if pad else out


register_2to4_tactics(NAME, cutlass_rows_matmul, _offered, _prepare)
