"""2:4 structured sparsity: prune a model's GEMM weights, keep the pattern while fine-tuning, check who qualifies.

    masks = kiln.sparsity.prune_2to4(model)                 # in place; {layer: mask}
    with kiln.sparsity.keep_masks(model, masks):            # fine-tune with the pattern held
        train(model)
    print(kiln.sparsity.sparsity_summary(model))            # which layers the sparse kernels can take
    fast = kiln.compile(model, inputs=[x], enabled_precisions={torch.half}, sparse_weights=True)

docs/sparsity.md has the whole story.
"""

from kiln.sparsity.pattern import is_2to4, kernel_shape_problem, mask_2to4
from kiln.sparsity.prune import MaskKeeper, keep_masks, prunable_layers, prune_2to4
from kiln.sparsity.summary import LayerSparsity, SparsitySummary, sparsity_summary

__all__ = [
    "prune_2to4",
    "keep_masks",
    "MaskKeeper",
    "is_2to4",
    "mask_2to4",
    "kernel_shape_problem",
    "prunable_layers",
    "sparsity_summary",
    "SparsitySummary",
    "LayerSparsity",
]
