"""Lowering: FX passes over the frozen aten graph. The order lives in LOWERING_PASSES."""

from torch.fx import GraphModule

from kiln.lowering.canonicalize_views import canonicalize_views
from kiln.lowering.constants import drop_unused_constants
from kiln.lowering.fold_batch_norm import fold_batch_norm
from kiln.lowering.fold_channel_scale import fold_channel_scale
from kiln.lowering.fold_constants import fold_constants
from kiln.lowering.merge_parallel_convs import merge_parallel_convs
from kiln.lowering.remove_identity import remove_identity
from kiln.lowering.scalar_tensors import scalar_to_tensor
from kiln.quantize.qdq_graph import rewrite_quantize_dequantize

# PT2E quantize/dequantize pairs become fake-quantize ops before folding could erase their scales. Layer
# scales fold into weights once fold_constants has turned `gamma.view(1, -1, 1, 1)` into one constant.
# Parallel conv branches merge once each branch's BatchNorm is in its conv and a layer scale between them is one
# constant, while the weights keep the model's precision; before fold_channel_scale, which would take one branch's scale.
LOWERING_PASSES = [
    remove_identity, rewrite_quantize_dequantize, fold_batch_norm, canonicalize_views, scalar_to_tensor, fold_constants,
    merge_parallel_convs, fold_channel_scale,
]  # fmt: skip


def lower(gm: GraphModule) -> GraphModule:
    for lowering_pass in LOWERING_PASSES:
        gm = lowering_pass(gm)
    gm.graph.eliminate_dead_code()
    drop_unused_constants(gm)
    gm.graph.lint()
    gm.recompile()
    return gm
