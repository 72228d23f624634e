"""The `reduce` layer: one reference for every reduction op, dispatched by a small table.

`dims` is None for a reduction over every dim; aten's overloads are called directly where the
Python binding would be ambiguous about `dim=None`.
"""

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.registry import reference

aten = torch.ops.aten


def _prod(x, dims, keepdim, a):
    # aten.prod reduces one dim (prod.dim_int) or everything (prod.default, which has no keepdim).
    return torch.prod(x) if dims is None else torch.prod(x, dims[0], keepdim)


REDUCE_OPS = {
    "sum": lambda x, dims, keepdim, a: aten.sum.dim_IntList(x, dims, keepdim),
    "mean": lambda x, dims, keepdim, a: aten.mean.dim(x, dims, keepdim),
    "amax": lambda x, dims, keepdim, a: torch.amax(x, dims or [], keepdim),
    "amin": lambda x, dims, keepdim, a: torch.amin(x, dims or [], keepdim),
    "max": lambda x, dims, keepdim, a: tuple(torch.max(x, dims[0], keepdim)),
    "min": lambda x, dims, keepdim, a: tuple(torch.min(x, dims[0], keepdim)),
    "argmax": lambda x, dims, keepdim, a: torch.argmax(x, None if dims is None else dims[0], keepdim),
    "argmin": lambda x, dims, keepdim, a: torch.argmin(x, None if dims is None else dims[0], keepdim),
    "prod": _prod,
    "any": lambda x, dims, keepdim, a: aten.any.dims(x, dims, keepdim),
    "all": lambda x, dims, keepdim, a: aten.all.dims(x, dims, keepdim),
    "var": lambda x, dims, keepdim, a: aten.var.correction(x, dims, correction=a["correction"], keepdim=keepdim),
    "norm": lambda x, dims, keepdim, a: torch.linalg.vector_norm(x, float(a["ord"]), dims, keepdim),
}


@reference("reduce")
def reduce_reference(layer, inputs, run):
    a = layer.attrs
    x = inputs[0]
    if a.get("dtype") is not None:
        # That is what the dtype= argument of sum/mean/prod/norm means: cast, then accumulate in that dtype.
        x = x.to(dtype_from_name(a["dtype"]))
    return REDUCE_OPS[a["op"]](x, a["dims"], a["keepdim"], a)
