"""Dynamic dims: from kiln.Input ranges to torch.export's dynamic_shapes."""

from __future__ import annotations

import torch.utils._pytree as pytree
from torch.export import Dim

from kiln.capture.input_spec import Input


def dynamic_shapes_for(specs: list[Input], flat_spec: pytree.TreeSpec):
    """None when every input is static, else a structure matching (args, kwargs) of per-dim Dims."""
    if not any(s.is_dynamic for s in specs):
        return None
    per_input = []
    for i, spec in enumerate(specs):
        dims = {}
        for d in spec.dynamic_dims():
            lo, hi = spec.min_shape[d], spec.max_shape[d]
            dims[d] = Dim(f"in{i}_d{d}", min=lo, max=hi)
        per_input.append(dims or None)
    args, kwargs = pytree.tree_unflatten(per_input, flat_spec)
    return (tuple(args), kwargs) if kwargs else tuple(args)
