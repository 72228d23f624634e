"""The `attention` layer: softmax(q k^T * scale + mask) v, with causal masking and grouped-query heads."""

import torch.nn.functional as F

from kiln.engine.kernels.registry import reference


@reference("attention")
def attention_reference(layer, inputs, run):
    q, k, v, mask = inputs
    a = layer.attrs
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=a["is_causal"], scale=a["scale"], enable_gqa=a["enable_gqa"])
