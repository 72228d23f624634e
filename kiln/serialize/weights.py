"""Weights <-> one safetensors blob, keeping each tensor's memory layout.

safetensors stores dense row-major data, but the builder prepares weights in the layout a
tactic reads (channels-last conv filters, transposed GEMM operands). A weight whose strides
are a permutation of a dense layout is stored permuted to row-major, with the permutation in
the manifest, and viewed back on load, so a loaded plan sees the strides it was built with.
"""

from __future__ import annotations

import safetensors.torch
import torch

from kiln.errors import CorruptFileError


def dense_order(t: torch.Tensor) -> list[int] | None:
    """The dim order (outermost first) that makes `t` row-major, or None if it is not a dense permutation."""
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    return order if t.permute(order).is_contiguous() else None


def pack_weights(tensors: dict[str, torch.Tensor]) -> tuple[bytes, dict[str, list[int]]]:
    """The safetensors blob, and the dim order of every tensor not stored in its own row-major layout."""
    stored, orders = {}, {}
    for key, value in tensors.items():
        value = value.detach().to("cpu")
        order = dense_order(value) if not value.is_contiguous() else None
        if order is not None:
            orders[key] = order
            value = value.permute(order)
        # clone: safetensors refuses tensors that share storage, and views of a larger buffer.
        stored[key] = value.contiguous().clone()
    return safetensors.torch.save(stored), orders


def unpack_weights(blob: bytes, orders: dict, device: torch.device) -> dict[str, torch.Tensor]:
    try:
        stored = safetensors.torch.load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError; any failure means a bad blob
        raise CorruptFileError(f"its weights are not valid safetensors ({exc})") from None
    out = {}
    for key, value in stored.items():
        order = orders.get(key)
        value = value.to(device)
        if order is not None:
            if sorted(order) != list(range(value.dim())):
                raise CorruptFileError(f"weight {key!r} has a bad dim order {order}")
            inverse = sorted(range(len(order)), key=order.__getitem__)
            value = value.permute(inverse)
        out[key] = value
    return out
