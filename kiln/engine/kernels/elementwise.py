import torch

from kiln.engine.kernels.registry import reference

BINARY_OPS = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "eq": torch.eq,
    "ne": torch.ne,
    "lt": torch.lt,
    "le": torch.le,
    "gt": torch.gt,
    "ge": torch.ge,
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
}


@reference("binary")
def binary_reference(layer, inputs, run):
    fn = BINARY_OPS[layer.attrs["op"]]
    a, b = inputs
    return fn(a, layer.attrs["scalar"] if b is None else b)
