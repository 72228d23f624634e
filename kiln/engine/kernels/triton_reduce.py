"""sum / mean / amax / amin over any dims (and global average pooling) as one generated Triton kernel with its prologue.

What a network reduces is usually made by a pointwise group just before: ConvNeXt's and
PoolFormer's last layer-scale multiply and residual add feed the global average pool, so the
residual stream is written only for the pool to read it back. Here the prologue is computed
per element inside the reduction and the stream is never written unless something else reads it.

A program owns BLOCK_O outputs (the kept dims, flattened) and loops over the reduced dims
(flattened) BLOCK_R at a time, accumulating in FP32 per lane; every tensor is read through its
strides. The tile's vector axis is whichever of the two is innermost in memory: the reduced dim
for a last-dim reduction, the channels for a spatial mean of a channels-last tensor, so loads
coalesce in both cases.
"""

from __future__ import annotations

import math

import torch

from kiln.engine.kernels.codegen.program import FLOAT_DTYPES
from kiln.engine.kernels.codegen.strided import HEADER, dtypes_comment, emit_loaded, expanded_strides, store, stride_params
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_reduction import TAKES, FusedParts, generated_reduction, run_parts
from kiln.engine.kernels.registry import tactic

try:
    import triton
except ImportError:  # a CPU-only install: the tactics are not offered
    triton = None

# How each reduction starts, folds one value in, and finishes (FP32 accumulators per lane).
ACCUMULATE = {
    "sum": ("0.0", "acc + tl.where(mask, v, 0.0)", "tl.sum(acc, axis={axis})"),
    "mean": ("0.0", "acc + tl.where(mask, v, 0.0)", "tl.sum(acc, axis={axis}) / NR"),
    "amax": ('-float("inf")', 'tl.maximum(acc, tl.where(mask, v, -float("inf")))', "tl.max(acc, axis={axis})"),
    "amin": ('float("inf")', 'tl.minimum(acc, tl.where(mask, v, float("inf")))', "tl.min(acc, axis={axis})"),
    # Vector norms (reduce op "norm", by its ord); sqrt_rn: IEEE rounding like ATen's, once per output.
    "norm2": ("0.0", "acc + tl.where(mask, v * v, 0.0)", "tl.sqrt_rn(tl.sum(acc, axis={axis}))"),
    "norm1": ("0.0", "acc + tl.where(mask, tl.abs(v), 0.0)", "tl.sum(acc, axis={axis})"),
    "norminf": ("0.0", "tl.maximum(acc, tl.where(mask, tl.abs(v), 0.0))", "tl.max(acc, axis={axis})"),
}
# The reduce layer's vector norm by its ord (convert/reduce.py: a float, or "inf" as a string) -> an ACCUMULATE op.
_NORM_OPS = {2.0: "norm2", 1.0: "norm1", float("inf"): "norminf"}


def _reduce_op(a: dict) -> str | None:
    return _NORM_OPS.get(float(a.get("ord", 2.0))) if a["op"] == "norm" else a["op"]

# Reductions of other layer kinds that are one of the above: kind -> fn(attrs, rank) -> (op, dims, keepdim) or None.
AS_REDUCTION = {
    # No dims, or an empty list (aten's sum.dim_IntList and amax read [] as "all"), reduce everything.
    "reduce": lambda a, rank: (_reduce_op(a), a["dims"] or list(range(rank)), a["keepdim"]),
    "pool": lambda a, rank: ("mean", [rank - 2, rank - 1], True) if a.get("op") == "adaptive_avg" and a["output_size"] == [1, 1] else None,
}


def as_reduction(kind: str, attrs: dict, rank: int) -> tuple[str, list[int], bool] | None:
    spec = AS_REDUCTION[kind](attrs, rank)
    if spec is None or spec[0] not in ACCUMULATE or attrs.get("dtype") not in (None, "float32", "float16", "bfloat16"):
        return None
    op, dims, keepdim = spec
    return op, sorted(d % rank for d in dims) if rank else [], keepdim


def _declare(kind: str):
    @generated_reduction(kind)
    def predicate(attrs: dict, x) -> bool:
        return x is not None and x.rank >= 1 and x.dtype in FLOAT_DTYPES and as_reduction(kind, attrs, x.rank) is not None

    return predicate


for _kind in AS_REDUCTION:
    _declare(_kind)


def _applies_fused(layer, target) -> bool:
    # A broadcast epilogue reads whole rows back: triton_reduce_rows.py's kernel, not this one.
    a = layer.attrs
    return triton is not None and target.is_cuda and a["reduction"]["kind"] in AS_REDUCTION and not a.get("broadcast")


@tactic("fused_reduction", "triton_reduce", when=_applies_fused, takes=TAKES)
def fused_reduce_triton(layer, inputs, run):
    return run_parts(layer, inputs, run, reduce)


def reduce(parts: FusedParts, planned: list) -> list[torch.Tensor]:
    shape = list(torch.broadcast_shapes(*(t.shape for t in parts.prologue_inputs)))
    op, dims, keepdim = as_reduction(parts.kind, parts.attrs, len(shape))
    kept = [d for d in range(len(shape)) if d not in dims]
    out_shape = [1 if d in dims else size for d, size in enumerate(shape)] if keepdim else [shape[d] for d in kept]
    template = max(parts.prologue_inputs, key=lambda t: (list(t.shape) == shape, t.numel()))
    outs = []
    k = parts.num_results
    for i, (dtype, buf) in enumerate(zip(parts.out_dtypes, planned)):
        want = out_shape if i < k else shape
        if buf is None or list(buf.shape) != want or buf.dtype != dtype:
            buf = torch.empty(want, dtype=dtype, device=template.device)
        outs.append(buf)
    kept_sizes, red_sizes = [shape[d] for d in kept], [shape[d] for d in dims]
    num_out, num_red = math.prod(kept_sizes), math.prod(red_sizes)
    if num_out == 0:
        return outs
    if num_red == 0:
        raise ValueError(f"triton_reduce does not reduce over empty dims (shape {shape}, dims {dims})")
    order = [*kept, *dims]

    # A full reduction keeps one dummy dim of size 1, so the kernel always has an output index.
    def input_strides(t):
        full = expanded_strides(t, shape)
        return [full[d] for d in order] if kept else [0, *(full[d] for d in order)]

    def output_strides(t):
        full = expanded_strides(t, out_shape)
        return ([full[d] for d in kept] if keepdim else full) if kept else [0]

    # The tile's vector axis: the reduced one when the template's innermost dim is reduced.
    inner = min((d for d in range(len(shape)) if shape[d] != 1), key=lambda d: abs(template.expand(*shape).stride(d)) or 1 << 62)
    reduced_inner = inner in dims
    if reduced_inner:
        block_r = min(1024, triton.next_power_of_2(num_red))
        block_o = max(1, min(64, 2048 // block_r))
    else:
        block_o = min(64, triton.next_power_of_2(num_out))
        block_r = min(triton.next_power_of_2(num_red), max(1, 4096 // block_o))
    handed = outs[k:]
    kernel = _kernel(
        parts.prologue, parts.epilogue, op, max(1, len(kept)), len(dims), reduced_inner,
        [t.dtype for t in parts.prologue_inputs], [t.dtype for t in parts.epilogue_inputs], [o.dtype for o in outs],
    )  # fmt: skip
    strides = [s for t in (*parts.prologue_inputs, *handed) for s in input_strides(t)]
    strides += [s for t in (*parts.epilogue_inputs, *outs[:k]) for s in output_strides(t)]
    args = [*parts.prologue_inputs, *parts.epilogue_inputs, *outs, num_out, num_red, *(kept_sizes or [1]), *red_sizes, *strides]
    kernel[(triton.cdiv(num_out, block_o),)](*args, BLOCK_O=block_o, BLOCK_R=block_r, num_warps=4)
    return outs


_KERNELS: dict[tuple, object] = {}


def _kernel(prologue, epilogue, op, num_kept, num_red, reduced_inner, in_dtypes, epi_dtypes, out_dtypes):
    key = (repr(prologue.to_json()), repr(epilogue.to_json()), op, num_kept, num_red, reduced_inner)
    key += (tuple(in_dtypes), tuple(epi_dtypes), tuple(out_dtypes))
    kernel = _KERNELS.get(key)
    if kernel is None:
        source = kernel_source(prologue, epilogue, op, num_kept, num_red, reduced_inner, in_dtypes, epi_dtypes, out_dtypes)
        kernel = _KERNELS[key] = load_kernel(source, "reduce_kernel")
    return kernel


def _unflatten(flat: str, prefix: str, count: int) -> list[str]:
    """Lines splitting a flat index into `count` indices {prefix}0.. (sizes {PREFIX}0..), the last one innermost."""
    if count == 0:
        return []
    # One name per index space: a name bound before the loop and again inside it would have to keep its shape.
    rest = f"rest_{prefix}"
    lines = [f"{rest} = {flat}.to(tl.int64)"]
    for d in reversed(range(count)):
        size = f"{prefix.upper()}{d}"
        lines += [f"{prefix}{d} = {rest} % {size}", f"{rest} = {rest} // {size}"] if d else [f"{prefix}0 = {rest}"]
    return lines


def kernel_source(prologue, epilogue, op, num_kept, num_red, reduced_inner, in_dtypes, epi_dtypes, out_dtypes) -> str:
    ins = [f"pin{i}" for i in range(len(in_dtypes))]
    epis = [f"ein{i}" for i in range(len(epi_dtypes))]
    outs = [f"out{i}" for i in range(len(out_dtypes))]
    k = len(epilogue.outputs)  # the results come first, then the prologue's handed-out values
    rank = num_kept + num_red
    strides = [s for name in (*ins, *outs[k:]) for s in stride_params(name, rank)]
    strides += [s for name in (*epis, *outs[:k]) for s in stride_params(name, num_kept)]
    sizes = [f"K{d}" for d in range(num_kept)] + [f"R{d}" for d in range(num_red)]
    signature = ", ".join([*ins, *epis, *outs, "NO", "NR", *sizes, *strides, "BLOCK_O: tl.constexpr", "BLOCK_R: tl.constexpr"])
    # Tile [BLOCK_O, BLOCK_R] when the reduced dims are innermost in memory, else [BLOCK_R, BLOCK_O].
    o_axis, r_axis = ("[:, None]", "[None, :]") if reduced_inner else ("[None, :]", "[:, None]")
    axis = 1 if reduced_inner else 0
    tile = "[BLOCK_O, BLOCK_R]" if reduced_inner else "[BLOCK_R, BLOCK_O]"
    x_axes = [f"k{d}{o_axis}" for d in range(num_kept)] + [f"r{d}{r_axis}" for d in range(num_red)]
    start, fold, finish = ACCUMULATE[op]
    pro_lines, pro_results = emit_loaded(prologue, ins, in_dtypes, x_axes, "mask", "p")
    body = [
        "o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)",
        "omask = o < NO",
        *_unflatten("o", "k", num_kept),
        f"acc = tl.full({tile}, {start}, tl.float32)",
        "for start in range(0, NR, BLOCK_R):",
        "    j = start + tl.arange(0, BLOCK_R)",
        f"    mask = omask{o_axis} & (j < NR){r_axis}",
        *("    " + line for line in _unflatten("j", "r", num_red)),
        *("    " + line for line in pro_lines),
        f"    v = {pro_results[0]}.to(tl.float32)",
        f"    acc = {fold}",
        *("    " + store(n, d, x_axes, r, "mask") for n, d, r in zip(outs[k:], out_dtypes[k:], pro_results[1:])),
        # Outputs past the end hold -inf for amax: zero them so the epilogue computes nothing undefined.
        f"y = tl.where(omask, {finish.format(axis=axis)}, 0.0)",
    ]
    o_axes = [f"k{d}" for d in range(num_kept)]
    epi_lines, epi_results = emit_loaded(epilogue, epis, epi_dtypes, o_axes, "omask", "e", first="y")
    body += [*epi_lines, *(store(n, d, o_axes, r, "omask") for n, d, r in zip(outs, out_dtypes, epi_results))]
    text = "\n".join("    " + line for line in body)
    return dtypes_comment("kernels/triton_reduce.py", [*in_dtypes, *epi_dtypes, *out_dtypes]) + HEADER + (
        f"@triton.jit\ndef reduce_kernel({signature}):\n{text}\n"
    )
