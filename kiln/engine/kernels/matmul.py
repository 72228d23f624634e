import torch
import torch.nn.functional as F

from kiln.engine.kernels.registry import reference


@reference("linear")
def linear_reference(layer, inputs, run):
    x, w, b = inputs
    return F.linear(x, w, b)


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
