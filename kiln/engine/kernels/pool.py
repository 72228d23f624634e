"""The `pool` layer: max, avg, adaptive_avg and adaptive_max 2-D pooling over the last two dims."""

import torch.nn.functional as F

from kiln.engine.kernels.registry import reference

POOLS = {
    "max": lambda x, a, run: F.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]),
    "avg": lambda x, a, run: F.avg_pool2d(
        x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"], a["divisor_override"]
    ),
    "adaptive_avg": lambda x, a, run: F.adaptive_avg_pool2d(x, run.shape(a["output_size"])),
    "adaptive_max": lambda x, a, run: F.adaptive_max_pool2d(x, run.shape(a["output_size"])),
}


@reference("pool")
def pool_reference(layer, inputs, run):
    return POOLS[layer.attrs["op"]](inputs[0], layer.attrs, run)
