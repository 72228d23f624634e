"""Activation memory planning: one arena, offsets from tensor lifetimes.

Every activation (a layer output) gets a byte range in one buffer. Two tensors may share
bytes only when their lifetimes do not overlap. Sizes are evaluated at the max value of
every symbol, so the one arena serves every shape of a dynamic profile.

Lifetimes are conservative about views: a tactic for a data-movement layer (reshape, slice,
permute...) may hand back a view of its input rather than a copy, so a tensor stays live
until the last use of anything that may alias it. Only layer kinds whose every tactic writes
a fresh tensor (FRESH_KINDS) end that chain.

Placement is greedy by size (largest first, lowest offset that fits among tensors live at the
same time): simple, and within a few percent of optimal on CNN and transformer graphs
(Pisarchyk & Lee, "Efficient Memory Management for Deep Neural Net Inference", 2020).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from kiln.engine.ir.network import Layer, SymbolRange
from kiln.engine.ir.symbol_values import max_symbol_values
from kiln.engine.ir.symbolic import evaluate_shape
from kiln.engine.ir.tensor import TensorDesc
from kiln.engine.plan import ArenaPlan

# The CUDA caching allocator rounds to 512 bytes; keeping offsets on that grid keeps every
# view 16-byte aligned for vectorised kernels.
ALIGNMENT = 512

# Kinds whose outputs never alias an input, whichever tactic runs them. A kind left out keeps its inputs
# alive as long as its output: normalisations, pools, softmax, attention and the generated reductions were
# left out until every tactic of theirs was checked to compute a new tensor, and adding them took the planned
# arena of ConvNeXt-T from 50.5 to 36.8 MB, PoolFormer-S12 from 42.9 to 18.4 MB, Swin-T from 101 to 83 MB
# (batch 8, FP16, as a CUDA build plans it). Data-movement kinds stay out: their tactics may return views.
FRESH_KINDS = frozenset(
    {"conv", "conv_epilogue", "linear", "matmul", "unary", "binary", "cast", "copy", "reduce", "concat", "where", "pad", "gather"}
    | {"fused_pointwise", "fused_reduction", "squeeze_excite", "norm", "pool", "softmax", "attention", "index_select"}
)


def tensor_bytes(desc: TensorDesc, env: Mapping[str, int]) -> int:
    numel = 1
    for d in evaluate_shape(desc.shape, env):
        numel *= d
    return numel * torch.empty((), dtype=desc.dtype).element_size()


def lifetimes(layers: list[Layer], outputs: list[str], activations: set[str]) -> dict[str, tuple[int, int]]:
    """tensor -> (step that writes it, last step that reads it or anything that may alias it)."""
    first = {}
    last = {}
    # alias[t] = the activations whose storage t may be a view of (itself included).
    alias: dict[str, set[str]] = {}
    for i, layer in enumerate(layers):
        sources = [n for n in layer.inputs if n is not None and n in activations]
        for n in sources:
            for owner in alias[n]:
                last[owner] = max(last[owner], i)
        for out in layer.outputs:
            first[out] = i
            last[out] = i
            alias[out] = {out}
            if layer.kind not in FRESH_KINDS:
                for n in sources:
                    alias[out] |= alias[n]
    end = len(layers)
    for out in outputs:
        for owner in alias.get(out, ()):
            last[owner] = end
    return {t: (first[t], last[t]) for t in first}


def plan_arena(layers: list[Layer], tensors: Mapping[str, TensorDesc], outputs: list[str], symbols: Mapping[str, SymbolRange]) -> ArenaPlan:
    env = max_symbol_values(symbols)
    activations = {o for layer in layers for o in layer.outputs}
    spans = lifetimes(layers, outputs, activations)
    sizes = {t: tensor_bytes(tensors[t], env) for t in spans}
    placed: list[tuple[int, int, int, int]] = []  # (offset, end offset, first step, last step)
    offsets: dict[str, tuple[int, int]] = {}
    for name in sorted(spans, key=lambda t: (-sizes[t], spans[t][0])):
        size = _align(max(sizes[name], 1))
        lo, hi = spans[name]
        clashes = sorted((o, e) for o, e, f, la in placed if f <= hi and lo <= la)
        offset = 0
        for o, e in clashes:
            if offset + size <= o:
                break
            offset = max(offset, e)
        placed.append((offset, offset + size, lo, hi))
        offsets[name] = (offset, sizes[name])
    arena_size = max((e for _, e, _, _ in placed), default=0)
    peak = 0
    for step in range(len(layers) + 1):
        peak = max(peak, sum(_align(sizes[t]) for t, (lo, hi) in spans.items() if lo <= step <= hi))
    return ArenaPlan(arena_size, offsets, peak_live=peak, total_unshared=sum(_align(s) for s in sizes.values()))


def overlapping_pairs(arena: ArenaPlan, spans: Mapping[str, tuple[int, int]]) -> list[tuple[str, str]]:
    """Pairs of tensors live at the same step whose bytes overlap: a correct plan has none."""
    names = list(arena.offsets)
    bad = []
    for i, a in enumerate(names):
        oa, sa = arena.offsets[a]
        for b in names[i + 1 :]:
            ob, sb = arena.offsets[b]
            live_together = spans[a][0] <= spans[b][1] and spans[b][0] <= spans[a][1]
            if live_together and oa < ob + sb and ob < oa + sa and sa and sb:
                bad.append((a, b))
    return bad


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
