"""Attention through one scaled_dot_product_attention kernel, each of PyTorch's backends a tactic.

The reference lets PyTorch pick a backend by heuristics; here each backend (FlashAttention-2,
memory-efficient, cuDNN) is a candidate the builder times on the layer's real shapes, so the
choice is measured. A backend that cannot take the layer (a float mask on flash, head dims it
does not support) raises at build time and is skipped.
"""

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kiln.engine.kernels.registry import tactic

BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
}


def _on_cuda(layer, target) -> bool:
    return target.is_cuda


def _unmasked_on_cuda(layer, target) -> bool:
    # FlashAttention takes no attn_mask at all: offering it a masked layer (Swin's, LeViT's bias from
    # optimize/fuse_attention.py) would only raise at build time, with a warning per layer.
    return target.is_cuda and layer.inputs[3] is None


def _register(name, backend):
    @tactic("attention", name, when=_unmasked_on_cuda if backend == SDPBackend.FLASH_ATTENTION else _on_cuda)
    def sdpa(layer, inputs, run):
        q, k, v, mask = inputs
        a = layer.attrs
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=a["is_causal"], scale=a["scale"], enable_gqa=a["enable_gqa"]
            )

    return sdpa


for _name, _backend in BACKENDS.items():
    _register(_name, _backend)
