"""With sparse_weights=True, find the GEMM-like layers whose constant weight has the 2:4 pattern.

Each linear, matmul-with-constant-right-operand and pointwise (1x1) conv layer gets
`attrs["sparse_2to4"] = {"rows", "cols", "dtype", "pattern", "reason"}`: the weight as a
[outputs, reduction] matrix and its dtype, whether every group of four along the reduction has at most two
non-zeros, and why the sparse kernel cannot take it (None when it can). The sparse tactic
(kernels/sparse_gemm.py) is offered only where `reason` is None; the report lists every
marked layer, taken or not. Runs last, so it sees the fused conv epilogues and the weights in
their final dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.optimize import OptimizeContext, optimize_pass
from kiln.sparsity.summary import weight_report

SPARSE_ATTR = "sparse_2to4"

# layer kind -> fn(layer, network) returning the constant weight's name, or None when the layer is no GEMM over one.
GemmWeight = Callable[[Layer, Network], str | None]
GEMM_WEIGHTS: dict[str, GemmWeight] = {}
# layer kind -> fn(weight) returning it as the [outputs, reduction] matrix the sparse kernel multiplies by,
# and the way back (a loaded plan that hands the weight to another tactic needs the original).
AS_MATRIX: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
FROM_MATRIX: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def gemm_weight(*kinds: str, as_matrix: Callable[[torch.Tensor], torch.Tensor], from_matrix: Callable[[torch.Tensor], torch.Tensor]):
    def register(fn: GemmWeight) -> GemmWeight:
        for kind in kinds:
            GEMM_WEIGHTS[kind] = fn
            AS_MATRIX[kind] = as_matrix
            FROM_MATRIX[kind] = from_matrix
        return fn

    return register


def _constant(network: Network, name: str | None, rank: int) -> str | None:
    value = network.constants.get(name) if name is not None else None
    return name if value is not None and value.dim() == rank else None


@gemm_weight("linear", as_matrix=lambda w: w, from_matrix=lambda m: m)
def linear_weight(layer: Layer, network: Network) -> str | None:
    return _constant(network, layer.inputs[1], 2)


@gemm_weight("matmul", as_matrix=lambda b: b.t(), from_matrix=lambda m: m.t().contiguous())
def matmul_weight(layer: Layer, network: Network) -> str | None:
    # a @ B with B a constant [K, N]: the sparse operand is B^T, 2:4 along K. With a bias (addmm),
    # the reference is addmm over a 2-D a, so only that form is taken.
    a, b, bias = layer.inputs
    if bias is not None and network.tensors[a].rank != 2:
        return None
    return _constant(network, b, 2)


def _is_pointwise(attrs: dict) -> bool:
    return (
        not attrs.get("transposed")
        and attrs.get("groups") == 1
        and attrs.get("stride") == [1, 1]
        and attrs.get("padding") == [0, 0]
    )


@gemm_weight("conv", "conv_epilogue", as_matrix=lambda w: w.reshape(w.shape[0], w.shape[1]), from_matrix=lambda m: m[..., None, None])
def pointwise_conv_weight(layer: Layer, network: Network) -> str | None:
    name = _constant(network, layer.inputs[1], 4)
    if name is None or not _is_pointwise(layer.attrs) or tuple(network.constants[name].shape[2:]) != (1, 1):
        return None
    return name


@optimize_pass
def mark_2to4_weights(network: Network, ctx: OptimizeContext) -> Network:
    if not getattr(ctx.settings, "sparse_weights", False):
        return network
    for layer in network.layers:
        find = GEMM_WEIGHTS.get(layer.kind)
        name = find(layer, network) if find is not None else None
        if name is None:
            continue
        matrix = AS_MATRIX[layer.kind](network.constants[name])
        pattern, _, reason = weight_report(matrix, matrix.dtype)
        rows, cols = matrix.shape
        info = {"rows": rows, "cols": cols, "dtype": dtype_name(matrix.dtype), "pattern": pattern, "reason": reason}
        layer.attrs = {**layer.attrs, SPARSE_ATTR: info}
    return network
