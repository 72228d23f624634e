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
from kiln.engine.kernels.triton_epilogue import fusable_activation, load_template, nhwc_output, nhwc_rows, require_low_precision, triton
from kiln.engine.runtime.executor import arena_output

# M grows with the batch: no specialisation on it (Triton would compile again whenever a new
# batch size changes M's divisibility by 16), so a ranged engine's new shape only launches.
# {epilogue} is filled per layer (triton_epilogue.load_template) from the op vocabulary.
TEMPLATE = """
@triton.jit(do_not_specialize=["M"])
def gemm_1x1_kernel(
    a_ptr, w_ptr, bias_ptr, res_ptr, c_ptr, M, N, K,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # 64-bit row offsets: M * N passes 2^31 at large batches of early EfficientNet layers.
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        w = tl.load(w_ptr + kk[:, None] * N + rn[None, :], mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, w, acc)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    {epilogue}
    tl.store(c_ptr + offsets, acc.to(c_ptr.dtype.element_ty), mask=mask)
"""
RESIDUAL_LOAD = "tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)"


def block_sizes(k: int, n: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): wide N tiles for wide convs; K tiles no wider than K needs."""
    block_n = 64 if n <= 64 else 128
    block_k = 16 if k <= 16 else 32 if k <= 32 else 64
    return 128, block_n, block_k, 4 if block_n == 64 else 8


def gemm_1x1(x: torch.Tensor, w_mat: torch.Tensor, bias, residual, attrs: dict, out: torch.Tensor | None = None):
    """act(conv1x1(x) + bias + residual) for NCHW-shaped x on channels-last memory; returns a channels-last NCHW tensor.

    The activation is attrs["activation"] (with attrs["activation_attrs"]), any op of the vocabulary."""
    n, k, h, w = x.shape
    cout = w_mat.shape[1]
    if w_mat.dim() != 2 or w_mat.shape[0] != k:
        raise ValueError("triton_gemm_1x1 runs only with the [Cin, Cout] weight its prepare made")
    rows = nhwc_rows(x)
    m = rows.shape[0]
    out = nhwc_output(out, (n, cout, h, w), x)
    res_rows = nhwc_rows(residual) if residual is not None else None
    block_m, block_n, block_k, warps = block_sizes(k, cout)
    grid = (triton.cdiv(m, block_m), triton.cdiv(cout, block_n))
    kernel = load_template(TEMPLATE, "gemm_1x1_kernel", attrs, RESIDUAL_LOAD if res_rows is not None else None)
    kernel[grid](
        rows, w_mat, bias if bias is not None else rows, res_rows if res_rows is not None else rows, out, m, cout, k,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=3,
    )  # fmt: skip
    return out


def _applies(layer, target) -> bool:
    return (
        triton is not None
        and is_pointwise_conv(layer, target)
        and layer.precision in ("float16", "bfloat16")
        and fusable_activation(layer.attrs.get("activation"))
    )


def conv_1x1_triton(layer, inputs, run):
    """A `conv` ([x, w, b]) or a `conv_epilogue` ([x, w, b, residual] and an activation)."""
    x, w_mat, b, *residual = inputs
    require_low_precision(x, "triton_gemm_1x1")
    return gemm_1x1(x, w_mat, b, residual[0] if residual else None, layer.attrs, arena_output(run, 0))


for _kind in ("conv", "conv_epilogue"):
    tactic(_kind, "triton_gemm_1x1", when=_applies, prepare=weight_as_gemm_1x1)(conv_1x1_triton)
