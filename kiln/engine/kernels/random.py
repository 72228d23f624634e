"""`random`: rand, randn, randint, randperm and their _like forms, a fresh draw on every call.

The values are never those eager PyTorch draws (another generator state, another device
stream); shape, dtype and range are the op's. The engine's one 0-d input only says the dtype
and device, as for `arange`.
"""

import torch

from kiln.engine.ir.symbolic import evaluate
from kiln.engine.kernels.registry import reference


def _number(value, run):
    return evaluate(value, run.symbols) if isinstance(value, str) else value


RANDOM = {
    "rand": lambda shape, a, like: torch.rand(shape, dtype=like.dtype, device=like.device),
    "randn": lambda shape, a, like: torch.randn(shape, dtype=like.dtype, device=like.device),
    "randint": lambda shape, a, like: torch.randint(a["low"], a["high"], shape, dtype=like.dtype, device=like.device),
    "randperm": lambda shape, a, like: torch.randperm(shape[0], dtype=like.dtype, device=like.device),
}


@reference("random")
def random_reference(layer, inputs, run):
    a = layer.attrs
    bounds = {k: _number(a.get(k), run) for k in ("low", "high")}
    return RANDOM[a["op"]](run.shape(a["shape"]), {**a, **bounds}, inputs[0])
