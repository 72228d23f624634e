"""The `softmax` layer: softmax or log_softmax along one dim, optionally in a wider dtype."""

import torch.nn.functional as F

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.registry import reference

SOFTMAX_OPS = {"softmax": F.softmax, "log_softmax": F.log_softmax}


@reference("softmax")
def softmax_reference(layer, inputs, run):
    a = layer.attrs
    dtype = dtype_from_name(a["dtype"]) if a.get("dtype") else None
    return SOFTMAX_OPS[a["op"]](inputs[0], a["dim"], dtype=dtype)
