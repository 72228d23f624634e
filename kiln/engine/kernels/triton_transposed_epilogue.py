"""A generated pointwise pass that reads a GEMM result stored transposed: the sparse MLP chain's bias, activation and output.

cuSPARSELt is fast only when it writes W @ X^T as it comes, [N, M] row-major (issue 14: 1.33x and
1.37x over dense at BERT-large's FFN GEMMs, and slower than dense once anything turns it back into
[M, N]). The MLP chain (kernels/sparse_mlp.py) therefore keeps the hidden activation as H^T [F, M]
and needs two passes that know the layout:

- over H^T in place: bias (one value per row of H^T now) and the activation program, so H^T stays
  exactly the row-major [K, M] operand the second GEMM reads;
- from Y^T [N, M] to Y [M, N]: the transpose, bias, and whatever the linear's fused epilogue does
  (a residual add), in one read of Y^T and one write of Y.

Both are one kernel: a tile of the logical [M, N] result is loaded from `src` at `n * ld + m`
(coalesced along M), the bias and the program (codegen/program.py, the same op vocabulary as every
other epilogue) run on the FP32 tile, and the tile is stored through `dst`'s strides. Triton gives
the load and the store each its own coalesced layout and moves the tile between them through
shared memory, which is the transpose. Extra inputs of the program are read as the GEMM template
reads them (triton_gemm.extra_kind): full [M, N] row-major at the tile's offsets, or per feature.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.program import Program, emit
from kiln.engine.kernels.codegen.tiles import index_range, wide_index
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.triton_epilogue import MODULE_HEADER, triton
from kiln.engine.kernels.triton_gemm import epilogue_loads, extra_kind

BLOCK_M, BLOCK_N, WARPS = 64, 64, 4
_KERNELS: dict[tuple, object] = {}


def kernel_source(program: Program | None, extra_kinds: tuple[str, ...]) -> str:
    extras = [f"e{i}_ptr" for i in range(len(extra_kinds))]
    loads = epilogue_loads(extra_kinds, "rm[:, None] * N + rn[None, :]")
    body = []
    if program is not None:
        lines, (result,) = emit(program, loads, prefix="ep")
        body = [*lines, f"acc = {result}"]
    args = ", ".join(["src_ptr", "bias_ptr", "dst_ptr", *extras, "M", "N", "ld_src", "dst_sm", "dst_sn"])
    indent = "\n    "
    return (
        MODULE_HEADER
        + f"""
@triton.jit(do_not_specialize=["M", "ld_src"])
def transposed_epilogue_kernel(
    {args},
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDE_INDEX: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
{index_range("rm", "pid_m", "BLOCK_M", "    ")}
{index_range("rn", "pid_n", "BLOCK_N", "    ")}
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    acc = tl.load(src_ptr + rn[None, :] * ld_src + rm[:, None], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    {indent.join(body) if body else "pass"}
    tl.store(dst_ptr + rm[:, None] * dst_sm + rn[None, :] * dst_sn, acc.to(dst_ptr.dtype.element_ty), mask=mask)
"""
    )


def _kernel(program: Program | None, extra_kinds: tuple[str, ...]):
    key = (repr(program.to_json()) if program else "", extra_kinds)
    if key not in _KERNELS:
        _KERNELS[key] = load_kernel(kernel_source(program, extra_kinds), "transposed_epilogue_kernel")
    return _KERNELS[key]


def read_kinds(extras: list[torch.Tensor], out_shape: tuple[int, ...]) -> tuple[str, ...] | None:
    """How the kernel reads each extra input for a result of `out_shape` ('full' or 'col'), or None if it cannot."""
    kinds = tuple(extra_kind(e, out_shape) for e in extras)
    return None if None in kinds else kinds


def transposed_epilogue(src: torch.Tensor, bias, program: Program | None, extras: list, dst: torch.Tensor, shape=None) -> torch.Tensor:
    """dst[m, n] = program(src[n, m] + bias[n], *extras) for an [N, >= M] row-major `src` and an [M, N] `dst` at any strides.

    `dst` may be `src` itself seen transposed (src.t()[:M]): each element is read and written by one
    program, so the pass runs in place. Extras are of the result's `shape` (its leading dims
    unflattened, [M, N] if not given; row-major) or per feature."""
    m, n = dst.shape
    if src.dim() != 2 or src.shape[0] != n or src.shape[1] < m or src.stride(1) != 1:
        raise ValueError(f"transposed_epilogue reads a row-major [{n}, >= {m}] result, got {list(src.shape)} at strides {src.stride()}")
    kinds = read_kinds(extras, tuple(shape) if shape is not None else (m, n))
    if kinds is None:
        raise ValueError("transposed_epilogue reads extra inputs of the result's shape or along its features only")
    extras = [e.reshape(m, n).contiguous() if kind == "full" else e.reshape(-1).contiguous() for e, kind in zip(extras, kinds)]
    if m == 0 or n == 0:
        return dst
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _kernel(program, kinds)[grid](
        src, bias if bias is not None else src, dst, *extras, m, n, src.stride(0), dst.stride(0), dst.stride(1),
        HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, WIDE_INDEX=wide_index(src.numel(), dst.numel()),
        num_warps=WARPS,
    )  # fmt: skip
    return dst
