"""The `attention` layer as one Triton kernel: scores, mask, an online softmax in FP32 and the product with v.

PyTorch's fused SDPA backends do not take every attention that optimize/fuse_attention.py finds
in hand-written models. LeViT's has a q/k head dim (16) other than v's (32 or 64), a learned
additive bias per head, and layers that subsample the queries (49 queries over 196 keys); on the
H100, 5 of levit_128's 14 attention layers found no SDPA backend and ran the unfused path (a
bmm, a softmax and a bmm, the scores written to memory between them). Here each program takes
one (batch, head, block of queries), walks the keys a block at a time and keeps the running row
max and sum (flash attention's online softmax) and the output tile in FP32 registers, so the
scores never leave the chip, whatever the head dims and lengths:
- q/k and v head dims are independent, each padded in registers to a power of two >= 16 (tl.dot
  needs an inner size of at least 16) with masked loads; lengths need not be multiples of a block;
- the mask is whatever the layer carries, broadcast to [N, H, L, S] and read in place through its
  strides (0 where it is broadcast): additive float (LeViT's bias, Swin's window mask) or boolean
  (True attends); `is_causal` is the top-left causal mask SDPA uses; `enable_gqa` maps each query
  head to its group's key/value head;
- a row every key of which is masked out gives zeros, as PyTorch's math backend (the reference on
  the CPU) does, not NaN;
- q, k and v are read through their strides: the head-split views of a qkv projection cost no copy.
The softmax runs in base 2 (exp2), with log2(e) folded into the scale and the bias. Each tile
config is its own tactic, so the builder times them beside the SDPA backends and the unfused path.
FP16/BF16 only, like every Triton tactic here (tl.dot would round FP32 through TF32).
"""

from __future__ import annotations

import math

import torch

from kiln.engine.kernels.codegen.tiles import index_range, wide_index
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import MODULE_HEADER, require_low_precision, triton
from kiln.engine.runtime.executor import arena_output

LOG2E = 1.4426950408889634
# Past this head dim the FP32 output tile and q's tile no longer fit in registers at any config here.
MAX_HEAD_DIM = 256
# CUDA's limit on a grid's second axis, the query blocks.
MAX_GRID_Y = 65535
# MASK constexpr: how the mask input is read.
MASKS = {"none": 0, "additive": 1, "boolean": 2}

# The sequence lengths follow the input's shape: not specialised on, so a ranged engine's new shape only launches.
TEMPLATE = (
    MODULE_HEADER
    + """
@triton.jit(do_not_specialize=["L", "S"])
def attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, L, S, H, KV_GROUP, qk_scale,
    s_qn, s_qh, s_ql, s_qd, s_kn, s_kh, s_ks, s_kd, s_vn, s_vh, s_vs, s_vd,
    s_mn, s_mh, s_ml, s_ms, s_on, s_oh, s_ol, s_od,
    DQ: tl.constexpr, DV: tl.constexpr, DQ_P: tl.constexpr, DV_P: tl.constexpr, MASK: tl.constexpr,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE_INDEX: tl.constexpr,
):
    # The (batch, head) moves the base pointers (64-bit scalars); offsets within one head stay 32-bit. It is the
    # grid's first axis: Swin's windows x heads pass the 65535 programs a second axis may have at large batches.
    bh = tl.program_id(0)
    n = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    kv_h = h // KV_GROUP
QUERY_RANGE
    dq = tl.arange(0, DQ_P)
    dv = tl.arange(0, DV_P)
    rows = rm < L
    q = tl.load(
        q_ptr + n * s_qn + h * s_qh + rm[:, None] * s_ql + dq[None, :] * s_qd,
        mask=rows[:, None] & (dq[None, :] < DQ), other=0.0,
    )
    k_base = k_ptr + n * s_kn + kv_h * s_kh
    v_base = v_ptr + n * s_vn + kv_h * s_vh
    m_base = mask_ptr + n * s_mn + h * s_mh
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_P], tl.float32)
    for start in range(0, S, BLOCK_N):
        rn = start + tl.arange(0, BLOCK_N)
        if WIDE_INDEX:
            rn = rn.to(tl.int64)
        cols = rn < S
        kt = tl.load(k_base + rn[None, :] * s_ks + dq[:, None] * s_kd, mask=cols[None, :] & (dq[:, None] < DQ), other=0.0)
        s = tl.dot(q, kt) * qk_scale
        keep = cols[None, :] & (rm[:, None] >= 0)
        if MASK == 1:
            bias = tl.load(m_base + rm[:, None] * s_ml + rn[None, :] * s_ms, mask=rows[:, None] & cols[None, :], other=0.0)
            s += bias.to(tl.float32) * 1.4426950408889634
        if MASK == 2:
            allowed = tl.load(m_base + rm[:, None] * s_ml + rn[None, :] * s_ms, mask=rows[:, None] & cols[None, :], other=0)
            keep = keep & (allowed != 0)
        if CAUSAL:
            keep = keep & (rn[None, :] <= rm[:, None])
        s = tl.where(keep, s, float("-inf"))
        new_top = tl.maximum(top, tl.max(s, axis=1))
        # A row with every key so far masked keeps a max of -inf: exponents are taken from 0 so it stays 0, not NaN.
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)
        rescale = tl.exp2(top - shift)
        p = tl.exp2(s - shift[:, None])
        total = total * rescale + tl.sum(p, axis=1)
        v = tl.load(v_base + rn[:, None] * s_vs + dv[None, :] * s_vd, mask=cols[:, None] & (dv[None, :] < DV), other=0.0)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
        top = new_top
    acc = acc / tl.where(total > 0, total, 1.0)[:, None]  # a fully masked row: acc is 0, so is its output
    tl.store(
        out_ptr + n * s_on + h * s_oh + rm[:, None] * s_ol + dv[None, :] * s_od,
        acc.to(out_ptr.dtype.element_ty), mask=rows[:, None] & (dv[None, :] < DV),
    )
""".replace("QUERY_RANGE", index_range("rm", "tl.program_id(1)", "BLOCK_M", "    "))
)


# (BLOCK_M queries, BLOCK_N keys, num_warps), each a tactic the builder times per layer; the blocks shrink to the
# lengths (at least 16), so short rows (LeViT's 16 and 49 tokens, Swin's 49) do not pay for padding, and small
# query blocks give a batch-1 layer with few heads more programs.
CONFIGS = {
    "triton_attention": (64, 64, 4),
    "triton_attention_16x64": (16, 64, 2),
    "triton_attention_32x64": (32, 64, 4),
    "triton_attention_128x64": (128, 64, 8),
}


def _pow2_at_least_16(n: int) -> int:
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def block_sizes(length: int, keys: int, config: tuple[int, int, int]) -> tuple[int, int, int]:
    block_m, block_n, warps = config
    return min(block_m, _pow2_at_least_16(length)), min(block_n, _pow2_at_least_16(keys)), warps


def _head_span(t: torch.Tensor) -> int:
    """One past the largest offset the kernel computes in 32 bits: within one (batch, head)'s [rows, dim] matrix."""
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape[-2:], t.stride()[-2:]))


def _as4(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1) if t.dim() == 3 else t


def fused_attention(q, k, v, mask, attrs: dict, out: torch.Tensor | None = None, config=CONFIGS["triton_attention"]):
    """softmax(q k^T * scale + mask) v over [N, H, L, D] (or [N, L, D]) tensors, as SDPA computes it; ValueError where
    this kernel does not apply (the builder then skips it)."""
    require_low_precision(q, "triton_attention")
    if q.dim() not in (3, 4) or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(f"triton_attention takes 3-D or 4-D q, k, v, not {q.dim()}-D, {k.dim()}-D, {v.dim()}-D")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"triton_attention takes q, k, v of one dtype, not {q.dtype}, {k.dtype}, {v.dtype}")
    q4, k4, v4 = _as4(q), _as4(k), _as4(v)
    n, heads, length, depth = q4.shape
    kv_heads, keys, value_depth = k4.shape[1], k4.shape[2], v4.shape[3]
    if k4.shape[0] != n or v4.shape[0] != n or k4.shape[3] != depth or v4.shape[1:3] != k4.shape[1:3]:
        raise ValueError(f"triton_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not make one attention")
    if heads != kv_heads and not (attrs["enable_gqa"] and heads % kv_heads == 0):
        raise ValueError(f"triton_attention: {heads} query heads over {kv_heads} key/value heads without grouped-query attention")
    if max(depth, value_depth) > MAX_HEAD_DIM or min(length, keys, depth, value_depth) == 0:
        raise ValueError(
            f"triton_attention takes head dims 1 to {MAX_HEAD_DIM} and nonempty sequences, not q {tuple(q.shape)}, v {tuple(v.shape)}"
        )
    if mask is not None and attrs["is_causal"]:
        raise ValueError("triton_attention: a mask and is_causal together (SDPA refuses them too)")
    scale = attrs["scale"]
    if scale is None:
        scale = 1.0 / math.sqrt(depth)

    shape = (*q.shape[:-1], value_depth)
    if out is None or tuple(out.shape) != shape or out.dtype != q.dtype:
        out = torch.empty(shape, dtype=q.dtype, device=q.device)
    out4 = _as4(out)
    kind, mask4 = "none", q4  # any tensor stands in for an absent mask's pointer; MASK=0 never reads it
    if mask is not None:
        kind = "boolean" if mask.dtype == torch.bool else "additive"
        if kind == "additive" and not mask.dtype.is_floating_point:
            raise ValueError(f"triton_attention takes a boolean or float mask, not {mask.dtype}")
        try:
            mask4 = _as4(mask.expand(*q.shape[:-1], keys))
        except RuntimeError:
            raise ValueError(f"triton_attention: mask {tuple(mask.shape)} does not broadcast to {(*q.shape[:-1], keys)}") from None
        if kind == "boolean":
            mask4 = mask4.view(torch.uint8)  # same bytes; Triton loads uint8 where bool pointers are awkward

    block_m, block_n, warps = block_sizes(length, keys, config)
    grid = (n * heads, triton.cdiv(length, block_m))
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"triton_attention at {block_m}-query blocks launches at most {MAX_GRID_Y * block_m} queries, not {length}")
    kernel = load_kernel(TEMPLATE, "attention_kernel")
    kernel[grid](
        q4, k4, v4, mask4, out4, length, keys, heads, heads // kv_heads, float(scale) * LOG2E,
        *q4.stride(), *k4.stride(), *v4.stride(), *mask4.stride(), *out4.stride(),
        DQ=depth, DV=value_depth, DQ_P=_pow2_at_least_16(depth), DV_P=_pow2_at_least_16(value_depth),
        MASK=MASKS[kind], CAUSAL=bool(attrs["is_causal"]), BLOCK_M=block_m, BLOCK_N=block_n,
        WIDE_INDEX=wide_index(*(_head_span(t) for t in (q4, k4, v4, mask4, out4))),
        num_warps=warps,
    )  # fmt: skip
    return out


def _applies(layer, target) -> bool:
    return triton is not None and target.is_cuda


def _register(name: str, config: tuple[int, int, int]) -> None:
    def attention_triton(layer, inputs, run):
        q, k, v, mask = inputs
        return fused_attention(q, k, v, mask, layer.attrs, arena_output(run, 0), config)

    tactic("attention", name, when=_applies)(attention_triton)


for _name, _config in CONFIGS.items():
    _register(_name, _config)
