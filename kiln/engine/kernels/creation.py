"""`arange`: a range whose bounds may be symbolic, so it cannot be a constant of the plan."""

import torch

from kiln.engine.ir.symbolic import evaluate
from kiln.engine.kernels.registry import reference


def _number(value, run):
    return evaluate(value, run.symbols) if isinstance(value, str) else value


@reference("arange")
def arange_reference(layer, inputs, run):
    # The 0-d input only says which dtype and device: a tactic has no other tie to the device.
    like = inputs[0]
    a = layer.attrs
    return torch.arange(_number(a["start"], run), _number(a["end"], run), _number(a["step"], run), dtype=like.dtype, device=like.device)
