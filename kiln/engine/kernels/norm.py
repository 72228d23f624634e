"""The `norm` layer: batch (running stats), batch_stats, layer, rms, group and instance normalisation."""

import torch.nn.functional as F

from kiln.engine.kernels.registry import reference

# fn(x, weight, bias, running_mean, running_var, attrs, run). Momentum is 0 wherever torch takes one:
# these run at inference and must never update a statistic.
NORMS = {
    "batch": lambda x, w, b, m, v, a, run: F.batch_norm(x, m, v, w, b, False, 0.0, a["eps"]),
    "batch_stats": lambda x, w, b, m, v, a, run: F.batch_norm(x, None, None, w, b, True, 0.0, a["eps"]),
    "layer": lambda x, w, b, m, v, a, run: F.layer_norm(x, run.shape(a["shape"]), w, b, a["eps"]),
    "rms": lambda x, w, b, m, v, a, run: F.rms_norm(x, run.shape(a["shape"]), w, a["eps"]),
    "group": lambda x, w, b, m, v, a, run: F.group_norm(x, a["groups"], w, b, a["eps"]),
    "instance": lambda x, w, b, m, v, a, run: F.instance_norm(x, m, v, w, b, a["use_input_stats"], 0.0, a["eps"]),
}


@reference("norm")
def norm_reference(layer, inputs, run):
    return NORMS[layer.attrs["type"]](*inputs, layer.attrs, run)
