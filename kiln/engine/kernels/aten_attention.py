"""Attention through one scaled_dot_product_attention kernel, each of PyTorch's backends a tactic.

The reference lets PyTorch pick a backend by heuristics; here each backend (FlashAttention-2,
memory-efficient, cuDNN) is a candidate the builder times on the layer's real shapes, so the
choice is measured. A backend that cannot take the layer (a float mask on flash, head dims it
does not support) raises at build time and is skipped.

Some refusals are about memory, not shape: every fused backend wants the last dim of q, k, v
and the mask at stride 1, and the memory-efficient one wants q, k and v to start on a 16-byte
boundary (sm80+). The head-split views optimize/views.py makes free (a slice of a qkv
projection, a permute) can miss either. Where the backend refuses the tensors as they are but
takes dense copies of them, the tactic runs it on the copies; their cost is part of the time
the builder measures for it against the Triton kernels, which read any strides.
"""

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kiln.engine.kernels.alignment import aligned_16
from kiln.engine.kernels.registry import tactic

BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
}

try:
    from torch.backends.cuda import (
        SDPAParams,
        can_use_cudnn_attention,
        can_use_efficient_attention,
        can_use_flash_attention,
    )

    ACCEPTS = {
        SDPBackend.FLASH_ATTENTION: can_use_flash_attention,
        SDPBackend.EFFICIENT_ATTENTION: can_use_efficient_attention,
        SDPBackend.CUDNN_ATTENTION: can_use_cudnn_attention,
    }
except ImportError:  # a PyTorch without the checks: the backends get the tensors as they are
    ACCEPTS = {}


def _on_cuda(layer, target) -> bool:
    return target.is_cuda


def _unmasked_on_cuda(layer, target) -> bool:
    # FlashAttention takes no attn_mask at all: offering it a masked layer (Swin's, LeViT's bias from
    # optimize/fuse_attention.py) would only raise at build time, with a warning per layer.
    return target.is_cuda and layer.inputs[3] is None


def accepted_layout(backend: SDPBackend, inputs: list, attrs: dict) -> list:
    """q, k, v, mask as given where `backend` takes them; dense copies where only those are taken; else as given
    (the backend then raises its own 'No available kernel'). Call inside sdpa_kernel(backend)."""
    accepts = ACCEPTS.get(backend)
    if accepts is None or not inputs[0].is_cuda:
        return inputs

    def taken(q, k, v, mask) -> bool:
        return accepts(SDPAParams(q, k, v, mask, 0.0, attrs["is_causal"], attrs["enable_gqa"]))

    # A start off 16 bytes passes PyTorch's checks yet faulted the efficient backend on the H100 ("misaligned
    # address", storage offset 4 halves): such an operand is always copied to a fresh, aligned tensor.
    inputs = [aligned_16(t) for t in inputs]
    if taken(*inputs):
        return inputs
    dense = [t.contiguous() if t is not None else None for t in inputs]
    return dense if taken(*dense) else inputs



def _register(name, backend):
    @tactic("attention", name, when=_unmasked_on_cuda if backend == SDPBackend.FLASH_ATTENTION else _on_cuda)
    def sdpa(layer, inputs, run):
        a = layer.attrs
        with sdpa_kernel(backend):
            q, k, v, mask = accepted_layout(backend, list(inputs), a)
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=a["is_causal"], scale=a["scale"], enable_gqa=a["enable_gqa"]
            )

    return sdpa


for _name, _backend in BACKENDS.items():
    _register(_name, _backend)
