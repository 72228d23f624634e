"""Library kernels that want operands starting on a 16-byte boundary (cuSPARSELt, SDPA's efficient backend)."""

from __future__ import annotations

import torch


def aligned_16(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` itself when it starts on a 16-byte boundary, else a fresh copy (a view at an odd offset into a bigger
    tensor, e.g. a head-split slice, is the usual case): the H100 faulted ("misaligned address") on such views."""
    if t is None or t.data_ptr() % 16 == 0:
        return t
    return t.clone()
