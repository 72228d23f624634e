"""dtype conversions (.float(), .half(), .to(int), type_as → aten._to_copy) → `cast`; clone → `copy`."""

import torch

from kiln.engine.convert.registry import converter
from kiln.engine.ir.dtypes import dtype_name

aten = torch.ops.aten


def _same_device(node):
    device = node.kwargs.get("device")
    if device is not None and torch.device(device) != node.args[0].meta["val"].device:
        return f"copy to another device ({device})"
    return None


@converter(aten._to_copy.default, supports=_same_device)
def convert_to_copy(ctx, node):
    # memory_format is not kept: every engine tensor is dense, and the layout pass picks layouts.
    ((_, dtype),) = ctx.output_specs()
    return ctx.add("cast", [ctx.tensor(node.args[0])], {"dtype": dtype_name(dtype)})


@converter(aten.clone.default)
def convert_clone(ctx, node):
    return ctx.add("copy", [ctx.tensor(node.args[0])])


@converter(aten.copy.default)
def convert_copy(ctx, node):
    # copy(self, src) is src broadcast to self's shape in self's dtype (the functional form of self.copy_(src)).
    self_, src = node.args[:2]
    ((shape, dtype),) = ctx.output_specs()
    value = ctx.tensor(src)
    if value.dtype != dtype:
        value = ctx.add_like("cast", [value], value.shape, dtype, {"dtype": dtype_name(dtype)})
    return ctx.add("expand", [value], {"shape": shape})
