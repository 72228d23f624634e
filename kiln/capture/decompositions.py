"""Which aten ops torch.export decomposes before Kiln sees the graph.

Kiln starts from the core-ATen table and keeps whole the composite ops its engine
runs better as one layer than as their decompositions (attention, linear, norms,
activations that would otherwise become 3-5 pointwise ops).
"""

import torch

aten = torch.ops.aten

PRESERVED_OPS = [
    aten.scaled_dot_product_attention.default,
    aten.linear.default,
    aten.layer_norm.default,
    aten.group_norm.default,
    aten.silu.default,
    aten.hardswish.default,
    aten.hardsigmoid.default,
    aten.gelu.default,
    aten.softplus.default,
    aten.elu.default,
    aten.leaky_relu.default,
    aten.hardtanh.default,
    aten.adaptive_avg_pool2d.default,
    aten.upsample_nearest2d.vec,
    aten.upsample_bilinear2d.vec,
    aten.pixel_shuffle.default,
    aten.log_softmax.int,
    aten.softmax.int,
    aten.conv_transpose2d.input,
    aten.pad.default,
    # One `norm` layer each, instead of 5-10 pointwise/reduce ops whose fp16 statistics lose accuracy.
    aten.instance_norm.default,
    aten.rms_norm.default,
    # One `resize` layer each; decomposed they become arange/index/clamp graphs of up to ~150 ops (bicubic).
    aten.upsample_bicubic2d.vec,
    aten._upsample_nearest_exact2d.vec,
    aten.upsample_nearest1d.vec,
    aten.upsample_linear1d.vec,
]


def decomposition_table():
    table = torch.export.default_decompositions()
    for op in PRESERVED_OPS:
        table.pop(op, None)
    return table
