"""INT8 and FP8 GEMMs in Triton: qlinear, qmatmul (also batched, on two activations) and 1x1 qconv.

C[b] = A[b] @ B[b] over 8-bit operands with an INT32 (INT8) or FP32 (FP8) accumulator, any
strides (an attention matmul's transposed K is read in place), then the shared 8-bit tail
(triton_quantized_common.EPILOGUE_TAIL) before the single write. An activation zero point
(QAT/PT2E asymmetric inputs) is handled by subtracting x_zp * sum_k B[k, n] from the integer
accumulator. Each tile configuration is a tactic; the builder times them per layer.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.tiles import grouped_tile, index_range, span, tile_count, wide_index
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import load_template, nhwc_rows
from kiln.engine.kernels.triton_quantized_common import (
    EPILOGUE_TAIL,
    TILE_CONFIGS,
    accumulator_type,
    applies,
    epilogue_args,
    output_dtype,
    residual_load,
)

# M grows with the batch: no specialisation on it, so a ranged engine's new shape only launches.
TEMPLATE = (
    (
        """
@triton.jit(do_not_specialize=["M", "x_zp"])
def qgemm_kernel(
    a_ptr, b_ptr, scale_ptr, bias_ptr, res_ptr, c_ptr, M, N, K,
    s_ab, s_am, s_ak, s_bb, s_bk, s_bn,
    x_scale, x_zp, out_inv_scale, out_qmin, out_qmax, res_scale, res_zp,
    HAS_ZP: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_MODE: tl.constexpr, OUT_ZP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WIDE_INDEX: tl.constexpr,
):
    tile = tl.program_id(0)
GROUPED_TILE
    # A batch moves the base pointers (a 64-bit scalar each); offsets within one batch stay 32-bit.
    pid_b = tl.program_id(1).to(tl.int64)
ROW_RANGE
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_base = a_ptr + pid_b * s_ab
    b_base = b_ptr + pid_b * s_bb
    c_ptr += pid_b * M * N
    res_ptr += pid_b * M * N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TYPE)
    colsum = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_base + rm[:, None] * s_am + kk[None, :] * s_ak, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_base + kk[:, None] * s_bk + rn[None, :] * s_bn, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, out_dtype=ACC_TYPE)
        if HAS_ZP:
            colsum += tl.sum(b.to(tl.int32), axis=0)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
"""
        + EPILOGUE_TAIL
    )
    .replace("GROUPED_TILE", grouped_tile("    "))
    .replace("ROW_RANGE", index_range("rm", "pid_m", "BLOCK_M", "    "))
)


def kernel_for(layer, residual: bool):
    source = TEMPLATE.replace("ACC_TYPE", accumulator_type(layer.attrs["qdtype"]))
    return load_template(source, "qgemm_kernel", layer.attrs, residual_load(layer.attrs) if residual else None)


def qgemm(layer, a3: torch.Tensor, b3: torch.Tensor, w_scale, bias, residual, config, out: torch.Tensor | None = None):
    """out[b] = tail(a3[b] @ b3[b]) for a3 [B, M, K] and b3 [B or 1, K, N] (stride 0 over B broadcasts b)."""
    batch, m, k = a3.shape
    n = b3.shape[2]
    if out is None:
        out = torch.empty((batch, m, n), dtype=output_dtype(layer), device=a3.device)
    block_m, block_n, block_k, warps, stages = config
    grid = (tile_count(m, n, block_m, block_n), batch)
    s_bb = b3.stride(0) if b3.shape[0] > 1 else 0
    kernel_for(layer, residual is not None)[grid](
        a3, b3, w_scale, bias if bias is not None else w_scale, residual if residual is not None else out, out, m, n, k,
        a3.stride(0), a3.stride(1), a3.stride(2), s_bb, b3.stride(1), b3.stride(2),
        **epilogue_args(layer, w_scale, bias, residual), WIDE_INDEX=wide_index(span(a3[0]), span(b3[0]), m * n),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def weight_n_by_k(layer, weights: dict) -> dict:
    """qlinear's [N, K] weight (or a 1x1 qconv's [Cout, Cin, 1, 1]) as a dense [N, K] matrix, K fastest.

    The kernel reads it as B = [K, N] with strides (1, K): 8-bit tensor-core MMAs on Hopper want both
    operands K-major in shared memory, and a B with N fastest cost a transpose per tile (the first
    version, [K, N] row-major, ran resnet50's INT8 layers 1.1-3x slower than cuDNN FP16 on the H100)."""
    name = layer.inputs[1]
    w = weights[name]
    return {name: w.reshape(w.shape[0], -1).contiguous()}


def as_k_by_n(w_nk: torch.Tensor, k: int) -> torch.Tensor:
    if w_nk.dim() != 2 or w_nk.shape[1] != k or w_nk.stride(1) != 1:
        raise ValueError("the 8-bit Triton GEMM runs only with the K-fastest [N, K] weight its prepare made")
    return w_nk.t()


def qlinear_triton(config):
    def run(layer, inputs, run_ctx):
        x, w_nk, bias, residual, w_scale = inputs
        k = x.shape[-1]
        w_kn = as_k_by_n(w_nk, k)
        a = x.reshape(-1, k)
        res = residual.reshape(1, a.shape[0], -1).contiguous() if residual is not None else None
        out = qgemm(layer, a.unsqueeze(0), w_kn.unsqueeze(0), w_scale, bias, res, config)
        return out.view(*x.shape[:-1], w_kn.shape[1])

    return run


def qmatmul_triton(config):
    def run(layer, inputs, run_ctx):
        a, b, bias, residual, w_scale = inputs
        if b.dim() == 2:  # a weight: every row of every batch against one [K, N]
            a3, b3 = a.reshape(1, -1, a.shape[-1]), b.unsqueeze(0)
        else:
            if a.shape[:-2] != b.shape[:-2]:
                raise ValueError("triton qmatmul takes equal batch dimensions only")
            a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
        res = residual.reshape(a3.shape[0], a3.shape[1], -1).contiguous() if residual is not None else None
        out = qgemm(layer, a3, b3, w_scale, bias, res, config)
        return out.view(*a.shape[:-1], b.shape[-1])

    return run


def is_pointwise_qconv(layer) -> bool:
    a = layer.attrs
    return a["stride"] == [1, 1] and a["padding"] == [0, 0] and a["dilation"] == [1, 1] and a["groups"] == 1


def qconv_1x1_triton(config):
    def run(layer, inputs, run_ctx):
        x, w_nk, bias, residual, w_scale = inputs
        n, c, h, w = x.shape
        w_kn = as_k_by_n(w_nk, c)
        cout = w_kn.shape[1]
        rows = nhwc_rows(x)
        res = nhwc_rows(residual).unsqueeze(0) if residual is not None else None
        out = torch.empty((n, h, w, cout), dtype=output_dtype(layer), device=x.device)
        qgemm(layer, rows.unsqueeze(0), w_kn.unsqueeze(0), w_scale, bias, res, config, out.view(1, -1, cout))
        return out.permute(0, 3, 1, 2)

    return run


def _name(qdtype: str, config) -> str:
    # "kmajor": the weight layout its prepare makes; plans saved with the earlier [K, N] layout name a tactic this
    # Kiln lacks and are re-targeted, never run on a weight of the wrong layout.
    return f"triton_{qdtype}_gemm_kmajor_{config[0]}x{config[1]}x{config[2]}"


for _qdtype in ("int8", "fp8"):
    for _config in TILE_CONFIGS:
        tactic("qlinear", _name(_qdtype, _config), when=lambda layer, target, q=_qdtype: applies(layer, target, q), prepare=weight_n_by_k)(
            qlinear_triton(_config)
        )
        tactic("qmatmul", _name(_qdtype, _config), when=lambda layer, target, q=_qdtype: applies(layer, target, q))(qmatmul_triton(_config))
        tactic(
            "qconv",
            _name(_qdtype, _config),
            when=lambda layer, target, q=_qdtype: applies(layer, target, q) and is_pointwise_qconv(layer),
            prepare=weight_n_by_k,
        )(qconv_1x1_triton(_config))
