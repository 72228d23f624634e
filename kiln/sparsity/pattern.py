"""The 2:4 pattern: at most two non-zeros in every group of four along the reduction dimension.

NVIDIA's sparse tensor cores (compute capability 8.0 and later) skip the zeros of a weight
that has this pattern, at half the multiply work. "Reduction dimension" is the one a GEMM
sums over: the input features of a linear layer ([out, in] weight, groups along `in`), the
input channels of a 1x1 conv ([Cout, Cin, 1, 1]), the rows of a matmul's constant right
operand ([K, N], groups along K).

A dimension that is not a multiple of 4 ends in a short group; it counts as padded with
zeros (as a kernel would pad it), so it too may hold at most two non-zeros.
"""

from __future__ import annotations

import torch

GROUP = 4
KEPT = 2

# What the sparse kernels need of the weight matrix ([rows = outputs, cols = reduction]):
# both dims multiples of these (torch.sparse.SparseSemiStructuredTensorCUSPARSELT's own
# constraints, which are cuSPARSELt's for a row-major structured operand).
KERNEL_MULTIPLE = {torch.float16: 16, torch.bfloat16: 16, torch.int8: 32}


def as_reduction_matrix(weight: torch.Tensor) -> torch.Tensor:
    """[outputs, reduction] view of a linear ([out, in]) or 1x1 conv ([Cout, Cin, 1, 1]) weight."""
    if weight.dim() == 2:
        return weight
    if weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1):
        return weight.reshape(weight.shape[0], weight.shape[1])
    raise ValueError(f"expected a [out, in] linear or [Cout, Cin, 1, 1] conv weight, got shape {tuple(weight.shape)}")


def _groups(matrix: torch.Tensor) -> torch.Tensor:
    """[rows, groups, 4], the reduction dim zero-padded to a multiple of 4."""
    rows, cols = matrix.shape
    pad = (-cols) % GROUP
    if pad:
        matrix = torch.nn.functional.pad(matrix, (0, pad))
    return matrix.reshape(rows, -1, GROUP)


def is_2to4(weight: torch.Tensor) -> bool:
    """True when every group of four along the reduction (last / input-channel) dim has at most two non-zeros."""
    matrix = as_reduction_matrix(weight.detach())
    if matrix.numel() == 0:
        return False
    return bool(((_groups(matrix) != 0).sum(-1) <= KEPT).all())


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask (shape of `weight`) keeping the two largest magnitudes of every group of four."""
    matrix = as_reduction_matrix(weight.detach())
    rows, cols = matrix.shape
    groups = _groups(matrix.float().abs())
    # Ties (zeros included) go to the lower index: topk on CPU and CUDA is not guaranteed
    # stable, so break them explicitly with a tiny index-dependent offset on a copy.
    order = torch.arange(GROUP, device=groups.device, dtype=groups.dtype)
    keep = torch.topk(groups - order * torch.finfo(groups.dtype).tiny, KEPT, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, -1)[:, :cols].reshape(weight.shape)


def kernel_shape_problem(rows: int, cols: int, dtype: torch.dtype) -> str | None:
    """Why a [rows, cols] 2:4 weight of `dtype` cannot run on the sparse kernels, or None if it can."""
    multiple = KERNEL_MULTIPLE.get(dtype)
    if multiple is None:
        names = ", ".join(str(d).removeprefix("torch.") for d in KERNEL_MULTIPLE)
        return f"weight dtype {str(dtype).removeprefix('torch.')}: the sparse kernels take {names} (enable FP16 or BF16)"
    bad = [f"{name} {n}" for name, n in (("outputs", rows), ("reduction", cols)) if n % multiple or n < multiple]
    if bad:
        return f"{' and '.join(bad)} not a multiple of {multiple}, which cuSPARSELt needs for {str(dtype).removeprefix('torch.')}"
    return None
