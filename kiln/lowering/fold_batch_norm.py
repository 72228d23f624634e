import operator

import torch
from torch.fx import GraphModule

from kiln.lowering.constants import add_constant, constant_of

aten = torch.ops.aten
_BATCH_NORM = aten._native_batch_norm_legit_no_training.default


def fold_batch_norm(gm: GraphModule) -> GraphModule:
    """Conv → inference BatchNorm becomes one conv with rescaled weights and a new bias.

    Only when the conv's sole user is the BatchNorm, the conv is not transposed, and all
    weights and statistics are frozen constants. Folding is done in float64 so that the
    folded FP32 weights round once rather than compounding errors.
    """
    graph = gm.graph
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target is not _BATCH_NORM:
            continue
        conv = bn.args[0]
        if conv.op != "call_function" or conv.target is not aten.convolution.default or len(conv.users) != 1:
            continue
        if conv.args[6]:  # transposed
            continue
        users = list(bn.users)
        if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
            continue
        weight, bias = constant_of(gm, conv.args[1]), constant_of(gm, conv.args[2]) if conv.args[2] is not None else None
        gamma, beta, mean, var = (constant_of(gm, a) if a is not None else None for a in bn.args[1:5])
        eps = bn.args[6]
        if weight is None or mean is None or var is None or (conv.args[2] is not None and bias is None):
            continue
        out_ch = weight.shape[0]
        scale = torch.rsqrt(var.double() + eps)
        if gamma is not None:
            scale = scale * gamma.double()
        shift = -mean.double() * scale
        if beta is not None:
            shift = shift + beta.double()
        new_w = (weight.double() * scale.reshape(out_ch, *([1] * (weight.dim() - 1)))).to(weight.dtype)
        new_b = (shift + (bias.double() * scale if bias is not None else 0)).to(weight.dtype)
        w_node = add_constant(gm, new_w, conv, f"{conv.name}_folded_weight")
        b_node = add_constant(gm, new_b, conv, f"{conv.name}_folded_bias")
        conv.args = (conv.args[0], w_node, b_node, *conv.args[3:])
        for u in users:
            u.replace_all_uses_with(conv)
            graph.erase_node(u)
        graph.erase_node(bn)
    return gm
