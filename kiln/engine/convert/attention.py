"""aten.scaled_dot_product_attention (kept whole by capture) → one `attention` layer.

Inputs are (query, key, value, mask); the mask is boolean (True = attend) or additive float,
broadcast to (..., L, S). Grouped-query attention (fewer key/value heads) is an attribute.
"""

import torch

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten


def _attention_check(node):
    a = node_arguments(node)
    if isinstance(a["dropout_p"], torch.fx.Node) or a["dropout_p"] != 0:
        return "attention with dropout_p > 0 (random at inference)"
    if isinstance(a["scale"], torch.fx.Node):
        return "attention scale given as a tensor"
    return None


@converter(aten.scaled_dot_product_attention.default, supports=_attention_check)
def convert_attention(ctx, node):
    a = node_arguments(node)
    attrs = {"is_causal": bool(a["is_causal"]), "scale": a["scale"], "enable_gqa": bool(a["enable_gqa"])}
    inputs = [ctx.tensor(a["query"]), ctx.tensor(a["key"]), ctx.tensor(a["value"]), ctx.maybe_tensor(a["attn_mask"])]
    return ctx.add("attention", inputs, attrs)
