"""The `attention` layer the way hand-written attention ran before optimize/fuse_attention.py: three kernels.

SDPA's fused backends are not always faster than the unfused path on short rows: Swin's 7x7
windows (49 keys, head dim 32) are a batch of tiny GEMMs where a cuBLAS bmm, one generated
softmax over the rows (scale and mask applied as it loads them, the mask read in place through
its broadcast strides) and a second bmm can win. That is what the separate layers ran, so the
builder times this tactic beside the SDPA backends and fusing attention never forces a slower
kernel. The softmax writes over the scores in place: each row is loaded whole before it is stored.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.program import FLOAT_DTYPES, Program
from kiln.engine.kernels.codegen.rows import MAX_ROW
from kiln.engine.kernels.fused_reduction import IDENTITY, FusedParts
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_softmax import row_softmax, triton
from kiln.engine.runtime.executor import arena_output

SOFTMAX = {"op": "softmax", "dim": -1, "dtype": None}
# The scores go through memory here: past this size (long sequences) only the fused backends are worth timing,
# and timing this tactic could run the build out of memory.
MAX_SCORES_BYTES = 1 << 28


def _applies(layer, target) -> bool:
    a = layer.attrs
    return triton is not None and target.is_cuda and not a["is_causal"] and not a["enable_gqa"]


def scores_program(scale: float, masked: bool) -> Program:
    """scores * scale (+ mask): the softmax kernel's prologue, over inputs (scores[, mask])."""
    ops = [{"kind": "binary", "op": "mul", "args": [0], "attrs": {"op": "mul", "scalar": scale}}]
    if masked:
        ops.append({"kind": "binary", "op": "add", "args": [2, 1], "attrs": {"op": "add"}})
    return Program(2 if masked else 1, tuple(ops), (len(ops) + (1 if masked else 0),))


@tactic("attention", "triton_unfused", when=_applies)
def attention_unfused(layer, inputs, run):
    q, k, v, mask = inputs
    if q.dtype not in FLOAT_DTYPES or not 0 < k.shape[-2] <= MAX_ROW:
        raise ValueError(f"triton_unfused takes float attention over 1 to {MAX_ROW} keys, not {k.shape[-2]} {q.dtype}")
    if mask is not None and not mask.dtype.is_floating_point:
        raise ValueError("triton_unfused takes an additive float mask, not a boolean one")
    if q[..., 0].numel() * k.shape[-2] * q.element_size() > MAX_SCORES_BYTES:
        raise ValueError(f"triton_unfused keeps the scores in memory: {tuple(q.shape[:-1])} x {k.shape[-2]} is too large")
    scale = layer.attrs["scale"]
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-2, -1))
    prologue_inputs = [scores] if mask is None else [scores, mask]
    parts = FusedParts("softmax", SOFTMAX, scores_program(float(scale), mask is not None), prologue_inputs, [], IDENTITY, [], [q.dtype])
    (probs,) = row_softmax(parts, [scores])
    out = arena_output(run, 0)
    shape = (*probs.shape[:-1], v.shape[-1])
    if out is not None and tuple(out.shape) == shape and out.dtype == q.dtype and out.is_contiguous():
        return torch.matmul(probs, v, out=out)
    return torch.matmul(probs, v)
