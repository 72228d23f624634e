import torch
import torch.nn.functional as F

from kiln.engine.kernels.codegen.program import Program, evaluate
from kiln.engine.kernels.registry import reference


@reference("linear", takes=("epilogue",))
def linear_reference(layer, inputs, run):
    x, w, b, *extras = inputs
    return apply_epilogue(layer, F.linear(x, w, b), extras, run)


def apply_epilogue(layer, y: torch.Tensor, extras: list, run) -> torch.Tensor:
    """The layer's fused epilogue (optimize/fuse_gemm_epilogue.py), op by op through the ops' references."""
    program = layer.attrs.get("epilogue")
    if program is None:
        return y
    (out,) = evaluate(Program.from_json(program), [y, *extras], run)
    return out.to(y.dtype)


@reference("matmul")
def matmul_reference(layer, inputs, run):
    """a @ b, or alpha * (a @ b) + beta * bias: addmm's contract, where beta == 0 ignores the bias even if it holds NaN."""
    a, b, bias = inputs
    alpha, beta = layer.attrs.get("alpha", 1), layer.attrs.get("beta", 1)
    if bias is None:
        out = torch.matmul(a, b)
        return out if alpha == 1 else out * alpha
    fused = torch.addmm if a.dim() == 2 else torch.baddbmm
    return fused(bias, a, b, beta=beta, alpha=alpha)
