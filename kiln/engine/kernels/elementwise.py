"""`binary` (two tensors, or a tensor and a scalar) and `where` (select by a mask)."""

import torch

from kiln.engine.ir.symbolic import evaluate
from kiln.engine.kernels.registry import reference

BINARY_OPS = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "div_floor": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "div_trunc": lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    "fmod": torch.fmod,
    "remainder": torch.remainder,
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
    "logical_xor": torch.logical_xor,
    "bitwise_and": torch.bitwise_and,
    "bitwise_or": torch.bitwise_or,
    "bitwise_xor": torch.bitwise_xor,
    "atan2": torch.atan2,
}

# Ops whose second operand is scaled by `alpha` (aten.add/sub's alpha argument).
ALPHA_OPS = {"add": torch.add, "sub": torch.sub}


# The same ops as Triton expressions for generated kernels (kernels/codegen): fn(a, b) -> text,
# with float operands held in FP32 and comparisons giving booleans. A scalar second operand
# arrives as a literal in b. Ops missing here run as their own layers.
BINARY_TRITON = {
    "add": lambda a, b: f"{a} + {b}",
    "sub": lambda a, b: f"{a} - {b}",
    "mul": lambda a, b: f"{a} * {b}",
    "div": lambda a, b: f"{a} / {b}",
    "div_floor": lambda a, b: f"libdevice.floor({a} / {b})",
    "div_trunc": lambda a, b: f"libdevice.trunc({a} / {b})",
    "fmod": lambda a, b: f"libdevice.fmod({a}, {b})",
    "pow": lambda a, b: f"libdevice.pow({a}, {b})",
    "maximum": lambda a, b: f"tl.maximum({a}, {b})",
    "minimum": lambda a, b: f"tl.minimum({a}, {b})",
    "eq": lambda a, b: f"{a} == {b}",
    "ne": lambda a, b: f"{a} != {b}",
    "lt": lambda a, b: f"{a} < {b}",
    "le": lambda a, b: f"{a} <= {b}",
    "gt": lambda a, b: f"{a} > {b}",
    "ge": lambda a, b: f"{a} >= {b}",
    "logical_and": lambda a, b: f"({a} != 0) & ({b} != 0)",
    "logical_or": lambda a, b: f"({a} != 0) | ({b} != 0)",
    "atan2": lambda a, b: f"libdevice.atan2({a}, {b})",
}


@reference("binary")
def binary_reference(layer, inputs, run):
    a, b = inputs
    attrs = layer.attrs
    if b is None:
        b = attrs["scalar"]
        # A scalar taken from a dynamic dim (x / x.shape[0]) is an expression over the symbols.
        if isinstance(b, str):
            b = evaluate(b, run.symbols)
    alpha = attrs.get("alpha", 1)
    if alpha != 1:
        return ALPHA_OPS[attrs["op"]](a, b, alpha=alpha)
    return BINARY_OPS[attrs["op"]](a, b)


@reference("where")
def where_reference(layer, inputs, run):
    condition, a, b = inputs
    return torch.where(condition, a, b)
