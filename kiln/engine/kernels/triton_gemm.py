"""Linear layers as a Triton GEMM whose epilogue is generated from the fused pointwise program.

y = x @ W^T + b, then whatever optimize/fuse_gemm_epilogue.py fused onto y (GELU, a layer
scale, a residual add, a cast...), computed on the FP32 tile before the only write. cuBLAS is
faster on the GEMM alone at many shapes; the builder times both (aten_addmm then runs the
epilogue as a separate generated pass), per layer, so this tactic wins only where skipping
that pass pays: at large batch the activation is written once instead of three times, at
batch 1 one launch replaces two.

Extra inputs of the epilogue are read per tile: an input of the output's shape at the tile's
offsets, one that varies along the output features only ([N], [1, N], ...) at the tile's
columns. The weight is read as stored, through its strides, so no prepared copy is kept; the
1x1-conv tactic (triton_gemm_1x1.py) runs the same kernel over NHWC rows.
Tile configurations are separate tactics, so the builder's timing picks the tile per layer.
"""

from __future__ import annotations

import os

import torch

from kiln.engine.kernels.codegen.program import FLOAT_DTYPES, Program, emit
from kiln.engine.kernels.codegen.tiles import grouped_tile, index_range, tile_count, wide_index
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import MODULE_HEADER, triton
from kiln.engine.runtime.executor import arena_output

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # no Triton, or one without host tensor descriptors: the TMA tactics are not offered
    TensorDescriptor = None

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): a small tile for batch-1 token counts
# (ViT's 197 rows), a large one for big batches, and a narrow one with a long K step for few rows and a
# long K (a batch-1 fc2: on the H100, ConvNeXt-T's 49 x 3072 -> 768 took 9.8 us where 64 x 64 took 12.7).
CONFIGS = {"triton_gemm_64": (64, 64, 64, 4, 3), "triton_gemm_128": (128, 128, 64, 8, 3), "triton_gemm_16x32": (16, 32, 128, 2, 3)}
# The same GEMM with both operands brought in by the tensor-memory accelerator (Hopper's TMA, through
# Triton's tensor descriptors) and one persistent program per SM walking the tiles. On the H100 it beat
# the plain kernel only where K is long (ViT-B fc2 at batch 64: 0.105 ms against 0.119; cuBLAS 0.081) and
# lost elsewhere (ConvNeXt's K=96 fc1: 0.50 against 0.35), and 128x256 / 64x128 tiles never won, so it is
# one timed candidate. Reaching cuBLAS needs a pipelined, warp-specialised loop: not done yet.
TMA_CONFIGS = {"triton_gemm_tma_128": (128, 128, 64, 8, 4)}
_KERNELS: dict[tuple, object] = {}


def _kernel(program: Program | None, extra_kinds: tuple[str, ...], tma: bool = False):
    key = (repr(program.to_json()) if program else "", extra_kinds, tma)
    if key not in _KERNELS:
        source = tma_kernel_source(program, extra_kinds) if tma else kernel_source(program, extra_kinds)
        _KERNELS[key] = load_kernel(source, "gemm_kernel")
    return _KERNELS[key]


def epilogue_loads(extra_kinds: tuple[str, ...], full_offsets: str) -> list[str]:
    """The generated epilogue's inputs: `acc`, then each extra input's tile, read at `full_offsets` (an input of
    the output's shape) or along the columns `rn` (one value per output feature), as extra_kind named it."""
    loads = ["acc"]
    for i, kind in enumerate(extra_kinds):
        if kind == "full":
            loads.append(f"tl.load(e{i}_ptr + {full_offsets}, mask=mask, other=0.0).to(tl.float32)")
        else:
            loads.append(f"tl.load(e{i}_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]")
    return loads


def _epilogue(program: Program | None, extra_kinds: tuple[str, ...], indent: str) -> str:
    """Bias, then the generated program over the FP32 tile `acc` and the extra inputs at the tile's offsets."""
    loads = epilogue_loads(extra_kinds, "offsets")
    lines = [
        "mask = (rm[:, None] < M) & (rn[None, :] < N)",
        "offsets = rm[:, None] * N + rn[None, :]",
        "if HAS_BIAS:",
        "    acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]",
    ]
    if program is not None:
        body, (result,) = emit(program, loads, prefix="ep")
        lines += [*body, f"acc = {result}"]
    lines.append("tl.store(c_ptr + offsets, acc.to(c_ptr.dtype.element_ty), mask=mask)")
    return "\n".join(indent + line for line in lines)


def kernel_source(program: Program | None, extra_kinds: tuple[str, ...]) -> str:
    extras = [f"e{i}_ptr" for i in range(len(extra_kinds))]
    args = ", ".join(["a_ptr", "w_ptr", "bias_ptr", "c_ptr", "s_ptr", *extras, "M", "N", "K", "stride_wn", "stride_wk", "rows_per_scale"])
    return (
        MODULE_HEADER
        + f"""
@triton.jit(do_not_specialize=["M", "rows_per_scale"])
def gemm_kernel(
    {args},
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    WIDE_INDEX: tl.constexpr,
):
    tile = tl.program_id(0)
{grouped_tile("    ")}
{index_range("rm", "pid_m", "BLOCK_M", "    ")}
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        if HAS_SCALE:
            # The input scale prologue: a squeeze-excite channel scale, one row of K per group of rows (an image).
            sc = tl.load(s_ptr + (rm // rows_per_scale)[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            a = (a.to(tl.float32) * sc.to(tl.float32)).to(a.dtype)
        w = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, w, acc)
{_epilogue(program, extra_kinds, "    ")}
"""
    )


def tma_kernel_source(program: Program | None, extra_kinds: tuple[str, ...]) -> str:
    """The persistent TMA variant: a_desc over the [M, K] rows, w_desc over the weight as [N, K] (W_NK) or [K, N].

    Out-of-range rows and the K tail come back as zeros from the descriptors, so only the store is masked."""
    extras = [f"e{i}_ptr" for i in range(len(extra_kinds))]
    args = ", ".join(["a_desc", "w_desc", "bias_ptr", "c_ptr", *extras, "M", "N", "K"])
    return (
        MODULE_HEADER
        + f"""
@triton.jit(do_not_specialize=["M"])
def gemm_kernel(
    {args},
    HAS_BIAS: tl.constexpr, W_NK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    WIDE_INDEX: tl.constexpr,
):
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0)):
{grouped_tile("        ")}
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = a_desc.load([pid_m * BLOCK_M, k0])
            if W_NK:
                w = w_desc.load([pid_n * BLOCK_N, k0]).T
            else:
                w = w_desc.load([k0, pid_n * BLOCK_N])
            acc = tl.dot(a, w, acc)
{index_range("rm", "pid_m", "BLOCK_M", "        ")}
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
{_epilogue(program, extra_kinds, "        ")}
"""
    )


def extra_kind(extra: torch.Tensor, out_shape: tuple[int, ...]) -> str | None:
    """How the template reads an epilogue input: 'full' (the output's shape), 'col' (varies along features only), or None."""
    if tuple(extra.shape) == tuple(out_shape):
        return "full"
    if extra.numel() == out_shape[-1] and (extra.dim() == 0 or extra.shape[-1] == out_shape[-1]):
        return "col"
    return None


def gemm(
    x: torch.Tensor, w: torch.Tensor, b, extras: list, program: Program | None, config: tuple, out=None, row_scale=None, tma=False
) -> torch.Tensor:
    """program((x * row_scale) @ w.T + b, *extras) over the last dim of x; w is [N, K] at any strides (a
    linear's weight as stored, or the transposed view of a prepared [K, N] matrix). row_scale, if given,
    is [G, K]: row m of x is scaled by row m // (M / G), rounded to x's dtype before the product."""
    n_out, k = w.shape
    shape = (*x.shape[:-1], n_out)
    rows = x.reshape(-1, k)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    m = rows.shape[0]
    if out is None or tuple(out.shape) != shape or not out.is_contiguous() or out.dtype != x.dtype:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    kinds = tuple(extra_kind(e, shape) for e in extras)
    if None in kinds:
        raise ValueError("triton_gemm reads epilogue inputs of the output's shape or along its features only")
    extras = [e.contiguous() if kind == "full" else e.reshape(-1).contiguous() for e, kind in zip(extras, kinds)]
    rows_per_scale = 1
    if row_scale is not None:
        if row_scale.dim() != 2 or row_scale.shape[1] != k or m % row_scale.shape[0]:
            raise ValueError("triton_gemm's input scale is [groups, K] with the rows an exact number of groups")
        row_scale = row_scale.contiguous()
        rows_per_scale = m // row_scale.shape[0]
    block_m, block_n, block_k, warps, stages = config
    if tma and row_scale is None and _tma_ready(rows, w):
        _gemm_tma(rows, w, b, extras, program, kinds, config, out)
        return out
    grid = (tile_count(m, n_out, block_m, block_n),)
    _kernel(program, kinds)[grid](
        rows, w, b if b is not None else rows, out, row_scale if row_scale is not None else rows, *extras,
        m, n_out, k, w.stride(0), w.stride(1), rows_per_scale,
        HAS_BIAS=b is not None, HAS_SCALE=row_scale is not None, WIDE_INDEX=wide_index(m * k, m * n_out, w.numel()),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def _tma_ready(rows: torch.Tensor, w: torch.Tensor) -> bool:
    """Tensor descriptors need 16-byte aligned bases and rows, and a unit stride along their last dim.

    Where they cannot describe an operand (an odd K, a misaligned view), the plain kernel computes the same."""
    if TensorDescriptor is None or not rows.is_cuda and not _interpreting():
        return False
    item = rows.element_size()
    w_ok = (w.stride(1) == 1 and (w.stride(0) * item) % 16 == 0) or (w.stride(0) == 1 and (w.stride(1) * item) % 16 == 0)
    return w_ok and (rows.stride(0) * item) % 16 == 0 and rows.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _gemm_tma(rows, w, b, extras, program, kinds, config, out) -> None:
    block_m, block_n, block_k, warps, stages = config
    m, k = rows.shape
    n_out = w.shape[0]
    a_desc = TensorDescriptor.from_tensor(rows, [block_m, block_k])
    w_nk = w.stride(1) == 1
    # A [K, N] matrix seen transposed (the 1x1 conv's prepared weight) is described as it is stored.
    w_desc = TensorDescriptor.from_tensor(w, [block_n, block_k]) if w_nk else TensorDescriptor.from_tensor(w.t(), [block_k, block_n])
    grid = (max(1, min(tile_count(m, n_out, block_m, block_n), _processors(rows.device))),)
    _kernel(program, kinds, tma=True)[grid](
        a_desc, w_desc, b if b is not None else rows, out, *extras, m, n_out, k,
        HAS_BIAS=b is not None, W_NK=w_nk, WIDE_INDEX=wide_index(m * k, m * n_out),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip


_PROCESSORS: dict = {}


def _processors(device: torch.device) -> int:
    """Streaming multiprocessors of the device: one persistent program each (a few on the CPU interpreter)."""
    if device.type != "cuda":
        return 4
    if device not in _PROCESSORS:
        _PROCESSORS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _PROCESSORS[device]


def _applies(layer, target) -> bool:
    return triton is not None and target.is_cuda and layer.precision in ("float16", "bfloat16")


def _register(name: str, config: tuple, tma: bool = False) -> None:
    @tactic("linear", name, when=_applies, takes=("epilogue",))
    def linear_triton(layer, inputs, run):
        x, w, b, *extras = inputs
        if x.dtype not in FLOAT_DTYPES[1:]:
            raise ValueError(f"{name} takes FP16/BF16 only (tl.dot would round {x.dtype} through TF32)")
        program = layer.attrs.get("epilogue")
        return gemm(x, w, b, extras, Program.from_json(program) if program else None, config, arena_output(run, 0), tma=tma)


for _name, _config in CONFIGS.items():
    _register(_name, _config)
if TensorDescriptor is not None:
    for _name, _config in TMA_CONFIGS.items():
        _register(_name, _config, tma=True)
