"""The whole-row template shared by the generated row reductions (softmax, layer / RMS norm).

A program takes BLOCK_R whole rows of the last dim (padded to a power of two, BLOCK_D, in
registers): it loads the prologue's inputs through their strides over (leading dims..., column),
computes the prologue, hands the row block to the reduction's own lines (`middle`, which read `x`,
`mask`, `cols`, and leave the result in `y`), runs the epilogue on `y` and stores every output once.
Padding lanes hold `fill` in `x`, chosen by the reduction (0 for sums, a lowest value for a max).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.codegen.strided import HEADER, dtypes_comment, emit_loaded, expanded_strides, store, stride_params

try:
    import triton
except ImportError:  # a CPU-only install: no row kernel is launched
    triton = None

# Widest row a program holds in registers.
MAX_ROW = 8192


def run_rows(parts, planned: list, kernel_for: Callable[[int], object], params: Sequence = ()) -> list[torch.Tensor]:
    """Launch a row kernel over a fused layer's parts (kernels/fused_reduction.FusedParts): outputs go to the planned
    buffers where they fit, else fresh ones. `kernel_for(num_leading)` gives the kernel; `params` follow its inputs."""
    shape = list(torch.broadcast_shapes(*(t.shape for t in parts.prologue_inputs)))
    if not shape or not 0 < shape[-1] <= MAX_ROW:
        raise ValueError(f"row kernels take a last dim of 1 to {MAX_ROW} values, not the shape {shape}")
    template = max(parts.prologue_inputs, key=lambda t: (list(t.shape) == shape, t.numel()))
    outs = []
    for dtype, buf in zip(parts.out_dtypes, planned):
        if buf is None or list(buf.shape) != shape or buf.dtype != dtype:
            buf = torch.empty(shape, dtype=dtype, device=template.device)
        outs.append(buf)
    d = shape[-1]
    rows = outs[0].numel() // d
    if rows == 0:
        return outs
    # A single row is walked as [1, D]: every pointer block is then 2-D, as compiled Triton wants.
    leading = shape[:-1] or [1]
    strides = [s for t in (*parts.prologue_inputs, *parts.epilogue_inputs, *outs) for s in expanded_strides(t, [*leading, d])]
    block_d = triton.next_power_of_2(d)
    block_r = max(1, min(64, 4096 // block_d))
    warps = 4 if block_d * block_r <= 4096 else 8
    args = [*parts.prologue_inputs, *params, *parts.epilogue_inputs, *outs, rows, d, *leading, *strides]
    kernel_for(len(leading))[(triton.cdiv(rows, block_r),)](*args, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    return outs


def row_kernel_source(
    name: str,
    origin: str,
    prologue: Program,
    epilogue: Program,
    dtypes: tuple[Sequence, Sequence, Sequence],
    num_leading: int,
    fill: str,
    middle: list[str],
    params: Sequence[str] = (),
) -> str:
    """Module text of kernel `name`: args (prologue inputs, *params, epilogue inputs, outputs, R, D, leading sizes, strides).

    `dtypes` are those of the prologue inputs, the epilogue's inputs after its first, and the outputs
    (the epilogue's results, then the prologue's handed-out values)."""
    in_dtypes, epi_dtypes, out_dtypes = dtypes
    ins = [f"pin{i}" for i in range(len(in_dtypes))]
    epis = [f"ein{i}" for i in range(len(epi_dtypes))]
    outs = [f"out{i}" for i in range(len(out_dtypes))]
    rank = num_leading + 1
    sizes = [f"L{d}" for d in range(num_leading)]
    strides = [s for t in (*ins, *epis, *outs) for s in stride_params(t, rank)]
    signature = ", ".join(
        [*ins, *params, *epis, *outs, "R", "D", *sizes, *strides, "BLOCK_R: tl.constexpr", "BLOCK_D: tl.constexpr"]
    )
    axes = [f"i{d}[:, None]" for d in range(num_leading)] + ["cols[None, :]"]
    body = [
        "rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)",
        "cols = tl.arange(0, BLOCK_D)",
        "mask = (rows < R)[:, None] & (cols < D)[None, :]",
        "rest = rows.to(tl.int64)",
    ]
    for d in reversed(range(num_leading)):
        body += [f"i{d} = rest % L{d}", f"rest = rest // L{d}"] if d else ["i0 = rest"]
    pro_lines, pro_results = emit_loaded(prologue, ins, in_dtypes, axes, "mask", "p")
    body += [*pro_lines, f"x = tl.where(mask, {pro_results[0]}.to(tl.float32), {fill})", *middle]
    epi_lines, epi_results = emit_loaded(epilogue, epis, epi_dtypes, axes, "mask", "e", first="y")
    body += epi_lines
    k = len(epi_results)
    body += [store(o, d, axes, v, "mask") for o, d, v in zip(outs, out_dtypes, epi_results)]
    body += [store(o, d, axes, v, "mask") for o, d, v in zip(outs[k:], out_dtypes[k:], pro_results[1:])]
    text = "\n".join("    " + line for line in body)
    return dtypes_comment(origin, [*in_dtypes, *epi_dtypes, *out_dtypes]) + HEADER + f"@triton.jit\ndef {name}({signature}):\n{text}\n"
