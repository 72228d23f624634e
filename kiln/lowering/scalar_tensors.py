import torch
from torch.fx import GraphModule

aten = torch.ops.aten

# op taking `other` → the overload that takes it as a tensor (the .Scalar forms only take numbers).
_TENSOR_FORM = {
    **{op: op for op in (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.maximum.default, aten.minimum.default)},
    **{getattr(aten, name).Tensor: getattr(aten, name).Tensor for name in ("eq", "ne", "lt", "le", "gt", "ge")},
    **{getattr(aten, name).Scalar: getattr(aten, name).Tensor for name in ("add", "sub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge")},
}


def scalar_to_tensor(gm: GraphModule) -> GraphModule:
    """`x * t.item()` becomes `x * t` for a 0-d t: the same value, with no Python number in between.

    A number read out of a tensor (_local_scalar_dense) cannot cross into an engine block, so the
    op using it would stay in PyTorch. Passing the 0-d tensor itself is exact where the op then
    computes in the same dtype (a 0-d tensor promotes like a number within its category; a
    float64 0-d beside an int tensor would not, so that case is left alone).
    """
    for item in [n for n in gm.graph.nodes if n.op == "call_function" and n.target is aten._local_scalar_dense.default]:
        source = item.args[0]
        val = source.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() != 0:
            continue
        for user in list(item.users):
            if user.target not in _TENSOR_FORM or len(user.args) != 2 or user.kwargs or user.args[0] is item:
                continue
            a, b = (source if arg is item else arg for arg in user.args)
            other = user.args[0].meta.get("val")
            if not isinstance(other, torch.Tensor) or _computes_in(other, _number_like(item)) != _computes_in(other, val):
                continue
            user.args = (a, b)
            user.target = _TENSOR_FORM[user.target]
        if not item.users:
            gm.graph.erase_node(item)
    return gm


def _number_like(item) -> int | float | bool:
    kind = item.meta.get("val")
    return True if isinstance(kind, (bool, torch.SymBool)) else 1 if isinstance(kind, (int, torch.SymInt)) else 1.5


def _computes_in(tensor: torch.Tensor, other) -> torch.dtype:
    # The dtype an op computes in (for a comparison, before making booleans).
    return torch.result_type(tensor, other)
