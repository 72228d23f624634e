"""Linear as one cuBLAS GEMM with the bias fused (addmm) over the flattened leading dims.

F.linear folds a >2-D input into addmm only when it is contiguous; this tactic always flattens
the leading dims (reshape copies only when it must), so a transformer's (batch, tokens,
features) linear is one GEMM with the bias in its epilogue. The [out, in] weight is passed
transposed as a view: cuBLAS reads it K-major with no copy. Under the CUDA-graph runtime the
result is written straight into the planned arena (out=). A fused epilogue (bias is cuBLAS's,
the rest of optimize/fuse_gemm_epilogue.py's program) follows as one generated in-place kernel.
"""

import torch

from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.registry import tactic
from kiln.engine.runtime.executor import arena_output


def _on_cuda(layer, target) -> bool:
    return target.is_cuda


@tactic("linear", "aten_addmm", when=_on_cuda, takes=("epilogue",))
def linear_addmm(layer, inputs, run):
    x, w, b, *extras = inputs
    flat = x.reshape(-1, x.shape[-1])
    shape = (*x.shape[:-1], w.shape[0])
    out = arena_output(run, 0)
    if out is not None and tuple(out.shape) == shape and out.is_contiguous() and out.dtype == x.dtype:
        target = out.view(flat.shape[0], w.shape[0])
        if b is not None:
            torch.addmm(b, flat, w.t(), out=target)
        else:
            torch.mm(flat, w.t(), out=target)
        result = out
    else:
        result = (torch.addmm(b, flat, w.t()) if b is not None else torch.mm(flat, w.t())).view(shape)
    return finish_epilogue(layer, result, extras, run)


def finish_epilogue(layer, y: torch.Tensor, extras: list, run) -> torch.Tensor:
    """cuBLAS cannot run the fused epilogue: one generated kernel applies it over y in place."""
    program = layer.attrs.get("epilogue")
    if program is None:
        return y
    from kiln.engine.kernels.fused_pointwise import write_over  # it imports the runtime, which imports this package

    return write_over(Program.from_json(program), y, extras, run)
