"""Group normalisation (and instance norm with input statistics, batch norm with batch statistics) as two generated Triton kernels.

PyTorch's group norm gives each (sample, group) one thread block for its statistics: at batch
1 with one group (PoolFormer's GroupNorm1, 64 channels x 56 x 56) a single block reduces 200k
values while the GPU idles, and a channels-last input is first copied to NCHW. Here the
statistics are split: kernel 1 gives each (sample, group) up to MAX_SPLIT programs, each keeping
a Welford mean / M2 per lane over its chunk and writing one partial (count, mean, M2); kernel 2
(same grid) merges that group's partials (Chan's formula, exact for any split) and normalises its
chunk. Both walk a group's elements in memory order (channel-inner for NHWC, spatial-inner for
NCHW) and read every tensor through its strides, so either layout costs no copy. Instance norm
is group norm with a group per channel; batch statistics are a group per channel holding every
sample (WALKS["batch"]).

A fused layer's prologue (PoolFormer's layer-scale multiply and residual add before the norm)
is computed in kernel 1, which also writes the values the network still reads (the residual
stream); kernel 2 then reads that written value instead of recomputing the prologue. Its
epilogue runs in kernel 2 on the normalised value before the one store.
"""

from __future__ import annotations

import math

import torch

from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.codegen.strided import HEADER, dtypes_comment, emit_loaded, store, stride_params
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_reduction import IDENTITY, TAKES, UNFUSED_MIDDLE, FusedParts, generated_reduction, plain_parts, run_parts
from kiln.engine.kernels.registry import tactic
from kiln.engine.runtime.executor import arena_output

try:
    import triton
except ImportError:  # a CPU-only install: the tactics are not offered
    triton = None

MAX_SPLIT = 128
# Enough programs to fill an H100/H200 several times over, whatever the batch and group count.
TARGET_PROGRAMS = 512
AXES = ("n", "c", "s")


@generated_reduction("norm")
def is_group_norm(attrs: dict, x) -> bool:
    """Norms over statistics of the input itself: group, instance (with input statistics), batch statistics."""
    kind = attrs.get("type")
    grouped = kind in ("group", "batch_stats") or (kind == "instance" and attrs.get("use_input_stats"))
    return bool(grouped) and (x is None or x.rank >= 2)


def _applies_fused(layer, target) -> bool:
    r = layer.attrs["reduction"]
    return triton is not None and target.is_cuda and r["kind"] == "norm" and is_group_norm(r["attrs"], None)


def _applies_plain(layer, target) -> bool:
    return triton is not None and target.is_cuda and is_group_norm(layer.attrs, None) and len(layer.outputs) == 1


@tactic("fused_reduction", "triton_group_norm", when=_applies_fused, takes=TAKES)
def fused_group_norm_triton(layer, inputs, run):
    return run_parts(layer, inputs, run, group_norm)


@tactic("norm", "triton_groups", when=_applies_plain)
def group_norm_triton(layer, inputs, run):
    (out,) = group_norm(plain_parts("norm", layer.attrs, inputs, inputs[0].dtype), [arena_output(run, 0)])
    return out


UNFUSED_MIDDLE[("norm", "group")] = UNFUSED_MIDDLE[("norm", "batch_stats")] = group_norm_triton


def group_norm(parts: FusedParts, planned: list) -> list[torch.Tensor]:
    """Launch both kernels; outputs go to the planned buffers where they fit, else fresh ones."""
    shape = list(torch.broadcast_shapes(*(t.shape for t in parts.prologue_inputs)))
    template = max(parts.prologue_inputs, key=lambda t: (list(t.shape) == shape, t.numel()))
    n, c = shape[0], shape[1]
    spatial = math.prod(shape[2:])
    kind = parts.attrs["type"]
    groups = int(parts.attrs["groups"]) if kind == "group" else c
    fmt = torch.channels_last if len(shape) == 4 and template.dim() == 4 and _channels_inner(template) else torch.contiguous_format
    outs = []
    for dtype, buf in zip(parts.out_dtypes, planned):
        if buf is None or list(buf.shape) != shape or buf.dtype != dtype or _axes_strides(buf, shape) is None:
            buf = torch.empty(shape, dtype=dtype, device=template.device, memory_format=fmt)
        outs.append(buf)
    if outs[0].numel() == 0:
        return outs
    # Batch statistics are per channel over every sample: one "group" per channel, samples folded into it.
    group_size = n * spatial if kind == "batch_stats" else (c // groups) * spatial
    programs = c if kind == "batch_stats" else n * groups
    block = max(16, min(1024, triton.next_power_of_2(group_size)))
    split = max(1, min(MAX_SPLIT, triton.cdiv(TARGET_PROGRAMS, programs), triton.cdiv(group_size, block)))
    chunk = triton.cdiv(triton.cdiv(group_size, split), block) * block
    split = triton.cdiv(group_size, chunk)
    partials = torch.empty(programs * split * 3, dtype=torch.float32, device=template.device)

    prologue_inputs = [_strided(t, shape) for t in parts.prologue_inputs]
    results, handed = outs[: parts.num_results], outs[parts.num_results :]
    walk = "batch" if kind == "batch_stats" else "channels_inner" if _channels_inner(template) else "spatial_inner"
    # Kernel 2 reads the prologue's value where kernel 1 wrote it for the network, else recomputes it.
    reused = _reused_output(parts.prologue)
    apply_prologue, apply_inputs = (IDENTITY, [handed[reused]]) if reused is not None else (parts.prologue, prologue_inputs)
    weight, bias = (parts.extras + [None, None])[:2]
    epilogue_inputs = [_strided(t, shape) for t in parts.epilogue_inputs]
    sizes = [groups, c // groups, spatial, group_size, chunk, split]
    grid = (programs, split)
    warps = 4 if block >= 512 else 2

    stats = _kernel("stats", parts.prologue, [t.dtype for t in prologue_inputs], [t.dtype for t in handed], (), walk)
    stats[grid](
        *prologue_inputs, *handed, partials, *sizes, *_all_strides([*prologue_inputs, *handed], shape), BLOCK=block, num_warps=warps
    )
    affine = tuple(t is not None for t in (weight, bias))
    apply = _kernel(
        "apply", (apply_prologue, parts.epilogue), [t.dtype for t in apply_inputs], [t.dtype for t in epilogue_inputs],
        affine, walk, tuple(r.dtype for r in results),
    )  # fmt: skip
    vectors = [t.reshape(-1).contiguous() for t in (weight, bias) if t is not None]
    apply[grid](
        *apply_inputs, *vectors, *epilogue_inputs, *results, partials, *sizes, float(parts.attrs["eps"]),
        *_all_strides([*apply_inputs, *epilogue_inputs, *results], shape),
        BLOCK=block, SPLIT_P2=triton.next_power_of_2(split), num_warps=warps,
    )  # fmt: skip
    return outs


def _reused_output(prologue: Program) -> int | None:
    """Index among the handed-out outputs of the one that is the norm's input, if it is handed out."""
    if prologue is IDENTITY or prologue.outputs[0] not in prologue.outputs[1:]:
        return None
    return prologue.outputs[1:].index(prologue.outputs[0])


def _channels_inner(t: torch.Tensor) -> bool:
    strides = _axes_strides(t, list(t.shape))
    return strides is not None and t.dim() > 2 and 0 < strides[1] < strides[2]


def _axes_strides(t: torch.Tensor, shape: list[int]) -> list[int] | None:
    """(sample, channel, spatial) strides of t broadcast to shape, or None if its spatial dims do not collapse."""
    strides = t.expand(*shape).stride()
    spatial = [(size, st) for size, st in zip(shape[2:], strides[2:]) if size != 1]
    for (_, outer), (inner_size, inner) in zip(spatial, spatial[1:]):
        if outer != inner * inner_size:
            return None
    return [strides[0] if shape[0] != 1 else 0, strides[1] if shape[1] != 1 else 0, spatial[-1][1] if spatial else 0]


def _strided(t: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return t if _axes_strides(t, shape) is not None else t.expand(*shape).contiguous()


def _all_strides(tensors: list[torch.Tensor], shape: list[int]) -> list[int]:
    return [s for t in tensors for s in _axes_strides(t, shape)]


_KERNELS: dict[tuple, object] = {}


def _kernel(which: str, programs, in_dtypes, other_dtypes, affine, walk: str, out_dtypes=()):
    key = (which, repr([p.to_json() for p in programs] if isinstance(programs, tuple) else programs.to_json()))
    key += (tuple(in_dtypes), tuple(other_dtypes), affine, walk, out_dtypes)
    kernel = _KERNELS.get(key)
    if kernel is None:
        if which == "stats":
            source = stats_source(programs, in_dtypes, other_dtypes, walk)
        else:
            source = apply_source(*programs, in_dtypes, other_dtypes, affine, walk, out_dtypes)
        kernel = _KERNELS[key] = load_kernel(source, f"group_norm_{which}")
    return kernel


# Per walk: what a program's group id fixes, then each element's (sample, channel, spatial) index from
# its place j in the group, in memory order. Names bound before the loop keep one type (Triton's rule).
GROUP_FIXES = ["n = (ng // G).to(tl.int64)", "g = ng % G"]
WALKS = {
    "channels_inner": (GROUP_FIXES, ["s = j // CG", "c = g * CG + j % CG"]),
    "spatial_inner": (GROUP_FIXES, ["c = g * CG + j // S", "s = j % S"]),
    # One channel per group, every sample in it (batch statistics).
    "batch": ([], ["n = (j // S).to(tl.int64)", "s = j % S", "c = ng + j * 0"]),
}


def _group_walk(walk: str) -> tuple[list[str], list[str]]:
    """Lines before the loop (program ids to group and chunk), and the loop's header with each element's indices."""
    fixed, per_element = WALKS[walk]
    loop = ["for start in range(0, CHUNK, BLOCK):", "    j = sp * CHUNK + start + tl.arange(0, BLOCK)", "    mask = j < M"]
    return ["ng = tl.program_id(0)", "sp = tl.program_id(1)", *fixed], [*loop, *("    " + line for line in per_element)]


def stats_source(prologue: Program, in_dtypes, handed_dtypes, walk: str) -> str:
    ins = [f"pin{i}" for i in range(len(in_dtypes))]
    hands = [f"hout{i}" for i in range(len(handed_dtypes))]
    strides = [s for name in (*ins, *hands) for s in stride_params(name, 3)]
    signature = ", ".join([*ins, *hands, "part", "G", "CG", "S", "M", "CHUNK", "SPLIT", *strides, "BLOCK: tl.constexpr"])
    lines, results = emit_loaded(prologue, ins, in_dtypes, AXES, "mask", "p")
    head, loop = _group_walk(walk)
    body = [
        "cnt = tl.zeros([BLOCK], dtype=tl.float32)",
        "mean = tl.zeros([BLOCK], dtype=tl.float32)",
        "m2 = tl.zeros([BLOCK], dtype=tl.float32)",
        *head,
        *loop,
        *("    " + line for line in lines),
        f"    x = tl.where(mask, {results[0]}.to(tl.float32), 0.0)",
        # Welford per lane; lanes are merged once, after the loop.
        "    grown = cnt + mask.to(tl.float32)",
        "    delta = x - mean",
        "    mean = mean + tl.where(mask, delta / tl.maximum(grown, 1.0), 0.0)",
        "    m2 = m2 + tl.where(mask, delta * (x - mean), 0.0)",
        "    cnt = grown",
        *("    " + store(h, d, AXES, r, "mask") for h, d, r in zip(hands, handed_dtypes, results[1:])),
        "total = tl.sum(cnt, axis=0)",
        "merged = tl.sum(cnt * mean, axis=0) / tl.maximum(total, 1.0)",
        "dev = mean - merged",
        "base = (ng * SPLIT + sp) * 3",
        "tl.store(part + base, total)",
        "tl.store(part + base + 1, merged)",
        "tl.store(part + base + 2, tl.sum(m2 + cnt * dev * dev, axis=0))",
    ]
    text = "\n".join("    " + line for line in body)
    return dtypes_comment("kernels/triton_group_norm.py", [*in_dtypes, *handed_dtypes]) + HEADER + (
        f"@triton.jit\ndef group_norm_stats({signature}):\n{text}\n"
    )


def apply_source(prologue: Program, epilogue: Program, in_dtypes, epi_dtypes, affine, walk: str, out_dtypes) -> str:
    """Kernel 2; `out_dtypes` are the results' (the epilogue's outputs)."""
    ins = [f"pin{i}" for i in range(len(in_dtypes))]
    vectors = [name for name, present in zip(("weight", "bias"), affine) if present]
    epis = [f"ein{i}" for i in range(len(epi_dtypes))]
    outs = [f"out{i}" for i in range(len(out_dtypes))]
    strides = [s for name in (*ins, *epis, *outs) for s in stride_params(name, 3)]
    signature = ", ".join(
        [*ins, *vectors, *epis, *outs, "part", "G", "CG", "S", "M", "CHUNK", "SPLIT", "eps", *strides]
        + ["BLOCK: tl.constexpr", "SPLIT_P2: tl.constexpr"]
    )
    pro_lines, pro_results = emit_loaded(prologue, ins, in_dtypes, AXES, "mask", "p")
    affine_lines = []
    if "weight" in vectors:
        affine_lines.append("y = y * tl.load(weight + c, mask=mask, other=0.0).to(tl.float32)")
    if "bias" in vectors:
        affine_lines.append("y = y + tl.load(bias + c, mask=mask, other=0.0).to(tl.float32)")
    epi_lines, epi_results = emit_loaded(epilogue, epis, epi_dtypes, AXES, "mask", "e", first="y")
    head, loop = _group_walk(walk)
    body = [
        *head,
        "k = tl.arange(0, SPLIT_P2)",
        "kmask = k < SPLIT",
        "pbase = (ng * SPLIT + k) * 3",
        "pcount = tl.load(part + pbase, mask=kmask, other=0.0)",
        "pmean = tl.load(part + pbase + 1, mask=kmask, other=0.0)",
        "pm2 = tl.load(part + pbase + 2, mask=kmask, other=0.0)",
        "total = tl.sum(pcount, axis=0)",
        "mean = tl.sum(pcount * pmean, axis=0) / total",
        "dev = pmean - mean",
        "var = tl.sum(pm2 + pcount * dev * dev, axis=0) / total",
        "rstd = 1.0 / tl.sqrt_rn(var + eps)",
        *loop,
        *("    " + line for line in pro_lines),
        f"    y = ({pro_results[0]}.to(tl.float32) - mean) * rstd",
        *("    " + line for line in affine_lines),
        *("    " + line for line in epi_lines),
        *("    " + store(o, d, AXES, r, "mask") for o, d, r in zip(outs, out_dtypes, epi_results)),
    ]
    text = "\n".join("    " + line for line in body)
    return dtypes_comment("kernels/triton_group_norm.py", [*in_dtypes, *epi_dtypes, *out_dtypes]) + HEADER + (
        f"@triton.jit\ndef group_norm_apply({signature}):\n{text}\n"
    )
