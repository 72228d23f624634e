"""What every Triton conv kernel shares: the epilogue applied to its FP32 output tile before the
single write, and the rules for where that write goes.

A kernel template (triton_gemm_1x1.py, triton_depthwise.py) computes its tile, then calls
`epilogue` with the ACT code of the fused activation: one place defines what "silu" or
"hardswish" means on the tile, so a new activation is one line here and one test.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: no Triton tactic is offered
    triton = None

# Activation codes the kernels know (a constexpr, so each compiles to straight-line code).
ACTIVATIONS = {None: 0, "relu": 1, "silu": 2, "sigmoid": 3, "hardswish": 4, "relu6": 5}
LOW_PRECISION = (torch.float16, torch.bfloat16)


if triton is not None:

    @triton.jit
    def epilogue(acc, bias_ptr, res_ptr, offsets, mask, cols, col_mask, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr):
        """acc + bias[cols] + residual[offsets], then the activation: the conv_epilogue reference's order."""
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            acc += tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if ACT == 1:
            acc = tl.maximum(acc, 0.0)
        elif ACT == 2:
            acc = acc * tl.sigmoid(acc)
        elif ACT == 3:
            acc = tl.sigmoid(acc)
        elif ACT == 4:
            acc = acc * tl.minimum(tl.maximum(acc + 3.0, 0.0), 6.0) / 6.0
        elif ACT == 5:
            acc = tl.minimum(tl.maximum(acc, 0.0), 6.0)
        return acc


def require_low_precision(x: torch.Tensor, tactic: str) -> None:
    """FP32 layers are refused: tl.dot would round them through TF32, which an FP32 engine must not do."""
    if x.dtype not in LOW_PRECISION:
        raise ValueError(f"{tactic} takes FP16/BF16 only (tl.dot would round {x.dtype} through TF32)")


def nhwc_output(out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The arena's buffer when it is a dense NHWC tensor of the right shape and dtype, else a fresh one."""
    if out is not None and tuple(out.shape) == shape and out.dtype == like.dtype and out.permute(0, 2, 3, 1).is_contiguous():
        return out
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def nhwc_rows(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] on channels-last memory as the [N*H*W, C] matrix the kernels index."""
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, t.shape[1])
