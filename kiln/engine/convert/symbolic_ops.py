"""Integer arithmetic on dynamic sizes (x.shape[0] * 6, x.size(1) // 2).

These nodes make Python ints, not tensors: their value in ctx.values is a Dim (an int or
a symbol expression), read by the shape and selection converters that take them as
arguments. torch.export already wrote each result's expression into meta["val"], so the
value is read from there rather than rebuilt from the operands.
"""

import operator

import torch

from kiln.engine.convert.registry import converter, support_of
from kiln.engine.ir.symbolic import dim_of, evaluate, symbols_in
from kiln.errors import KilnError

aten = torch.ops.aten

SIZE_OPS = (
    aten.sym_size.int,
    aten.sym_numel.default,
    operator.add,
    operator.sub,
    operator.mul,
    operator.floordiv,
    operator.mod,
    operator.neg,
)


def _size_check(node):
    if not isinstance(node.meta.get("val"), (int, torch.SymInt)):
        return "Python arithmetic on a value that is not an integer size"
    dim = dim_of(node.meta["val"])
    try:
        evaluate(dim, dict.fromkeys(symbols_in(dim), 1))
    except KilnError:
        return f"size expression {dim} has an operator the engine cannot evaluate"
    except ArithmeticError:
        pass  # a division by zero at the probe values says nothing about real sizes
    # An engine block returns tensors only: a size the engine makes must be used inside it.
    for user in node.users:
        if user.op != "call_function" or support_of(user) is not None:
            return "size used outside the engine"
    return None


@converter(*SIZE_OPS, supports=_size_check)
def convert_size(ctx, node):
    return dim_of(node.meta["val"])
