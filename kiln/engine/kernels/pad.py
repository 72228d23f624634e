import torch.nn.functional as F

from kiln.engine.kernels.registry import reference


@reference("pad")
def pad_reference(layer, inputs, run):
    a = layer.attrs
    if a["mode"] == "constant":
        return F.pad(inputs[0], run.shape(a["pad"]), value=a["value"])
    return F.pad(inputs[0], run.shape(a["pad"]), mode=a["mode"])
