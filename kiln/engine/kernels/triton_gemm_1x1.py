"""1x1 convolutions as one Triton GEMM with the epilogue fused: bias, residual add, activation.

A 1x1 stride-1 conv over NHWC memory is C[M, N] = A[M, K] @ W[K, N] with M = N*H*W rows of K
input channels. In EfficientNet and MobileNet the expand conv is followed by SiLU or
hardswish, and the project conv by a residual add: as separate kernels, each writes the whole
activation tensor and reads it back (the SiLU after EfficientNet-B0's first expand conv moves
600 MB at batch 128). Here the output tile is finished in registers (bias, then the
residual, then the activation, the order of the conv_epilogue reference) and written once.

The same kernel serves a plain `conv` (no residual, no activation) so that the builder can
time it against cuBLAS (kernels/aten_conv.py: gemm_1x1) on every 1x1 conv.

Low precision only (triton_epilogue.require_low_precision). Without Triton installed the
tactic is not offered at all. TRITON_INTERPRET=1 runs the kernel on the CPU, which is how the
tests check it without a GPU.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.aten_conv import is_pointwise_conv, weight_as_gemm_1x1
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import epilogue_program, fusable_activation, nhwc_output, nhwc_rows, require_low_precision, triton
from kiln.engine.kernels.triton_gemm import gemm
from kiln.engine.runtime.executor import arena_output


def block_sizes(k: int, n: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): wide N tiles for wide convs; K tiles no wider than K needs."""
    block_n = 64 if n <= 64 else 128
    block_k = 16 if k <= 16 else 32 if k <= 32 else 64
    return 128, block_n, block_k, 4 if block_n == 64 else 8, 3


def gemm_1x1(x: torch.Tensor, w_mat: torch.Tensor, bias, residual, attrs: dict, out: torch.Tensor | None = None, scale=None):
    """act(conv1x1(x) + bias + residual) for NCHW-shaped x on channels-last memory; returns a channels-last NCHW tensor.

    The activation is attrs["activation"] (with attrs["activation_attrs"]), any op of the vocabulary."""
    n, k, h, w = x.shape
    cout = w_mat.shape[1]
    if w_mat.dim() != 2 or w_mat.shape[0] != k:
        raise ValueError("triton_gemm_1x1 runs only with the [Cin, Cout] weight its prepare made")
    out = nhwc_output(out, (n, cout, h, w), x)
    extras = [nhwc_rows(residual)] if residual is not None else []
    program = epilogue_program(attrs, residual is not None) if extras or attrs.get("activation") else None
    # The NHWC output is the [N*H*W, Cout] row-major matrix the GEMM writes.
    # A fused input scale ([N or 1, C, 1, 1], squeeze-excite) is one row of K per image.
    row_scale = scale.expand(n, k, 1, 1).reshape(n, k) if scale is not None else None
    rows_out = out.permute(0, 2, 3, 1).reshape(-1, cout)
    gemm(nhwc_rows(x), w_mat.t(), bias, extras, program, block_sizes(k, cout), out=rows_out, row_scale=row_scale)
    return out


def _applies(layer, target) -> bool:
    return (
        triton is not None
        and is_pointwise_conv(layer, target)
        and layer.precision in ("float16", "bfloat16")
        and fusable_activation(layer.attrs.get("activation"))
    )


def conv_1x1_triton(layer, inputs, run):
    """A `conv` ([x, w, b]) or a `conv_epilogue` ([x, w, b, residual] and an activation), either with a
    fused input scale as a last input; the scale is applied as the GEMM's prologue."""
    x, w_mat, b, *rest = inputs
    scale = rest.pop() if layer.attrs.get("scaled_input") else None
    require_low_precision(x, "triton_gemm_1x1")
    residual = rest[0] if rest else None
    return gemm_1x1(x, w_mat, b, residual, layer.attrs, arena_output(run, 0), scale=scale)


for _kind in ("conv", "conv_epilogue"):
    tactic(_kind, "triton_gemm_1x1", when=_applies, prepare=weight_as_gemm_1x1, takes=("scaled_input",))(conv_1x1_triton)
