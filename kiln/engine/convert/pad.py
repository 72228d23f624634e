"""F.pad in every mode (aten.pad, kept whole by capture) and aten.constant_pad_nd → `pad` layers.

Pad amounts may be sizes computed from dynamic dims; their converted values are Dims.
"""

import torch

from kiln.engine.convert.registry import converter, node_arguments

aten = torch.ops.aten


@converter(aten.pad.default, aten.constant_pad_nd.default)
def convert_pad(ctx, node):
    a = node_arguments(node)
    mode = a.get("mode", "constant")
    value = a["value"]
    if mode == "constant" and value is None:
        value = 0.0
    # Negative amounts crop; F.pad takes them too, so they need no case of their own.
    return ctx.add("pad", [ctx.tensor(a["input"])], {"pad": list(ctx.value(list(a["pad"]))), "mode": mode, "value": value})
