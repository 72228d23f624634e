"""`embedding_bag`: sum, mean or max of the embedding rows of each bag (the pooled output only)."""

import torch

from kiln.engine.kernels.registry import reference


@reference("embedding_bag")
def embedding_bag_reference(layer, inputs, run):
    weight, indices, offsets, per_sample_weights = inputs
    a = layer.attrs
    out = torch.ops.aten._embedding_bag(
        weight, indices, offsets, False, a["mode"], False, per_sample_weights, a["include_last_offset"], a["padding_idx"]
    )
    return out[0]
