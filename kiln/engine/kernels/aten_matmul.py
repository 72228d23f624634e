"""Linear as one cuBLAS GEMM with the bias fused (addmm) over the flattened leading dims.

F.linear folds a >2-D input into addmm only when it is contiguous; this tactic always flattens
the leading dims (reshape copies only when it must), so a transformer's (batch, tokens,
features) linear is one GEMM with the bias in its epilogue. The [out, in] weight is passed
transposed as a view: cuBLAS reads it K-major with no copy. Under the CUDA-graph runtime the
result is written straight into the planned arena (out=).
"""

import torch

from kiln.engine.kernels.registry import tactic
from kiln.engine.runtime.executor import arena_output


def _on_cuda(layer, target) -> bool:
    return target.is_cuda


@tactic("linear", "aten_addmm", when=_on_cuda)
def linear_addmm(layer, inputs, run):
    x, w, b = inputs
    flat = x.reshape(-1, x.shape[-1])
    shape = (*x.shape[:-1], w.shape[0])
    out = arena_output(run, 0)
    if out is not None and tuple(out.shape) == shape and out.is_contiguous() and out.dtype == x.dtype:
        target = out.view(flat.shape[0], w.shape[0])
        if b is not None:
            torch.addmm(b, flat, w.t(), out=target)
        else:
            torch.mm(flat, w.t(), out=target)
        return out
    result = torch.addmm(b, flat, w.t()) if b is not None else torch.mm(flat, w.t())
    return result.view(shape)
