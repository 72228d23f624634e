"""2:4 sparse GEMMs on sparse tensor cores through cuSPARSELt, for linear, matmul and 1x1 conv layers.

Offered only for layers optimize/sparse_weights.py marked (sparse_weights=True and a 2:4
constant weight of kernel-compatible shape), beside the dense tactics; the builder times them
all and keeps the fastest, so dense stays where sparse loses (small M, measured in issue 14).

The weight is prepared once into kiln.sparsity.packed's byte tensor: cuSPARSELt's compressed
matrix plus a portable copy of the kept values and their positions. The shape
torch._cslt_compress gave the compressed matrix ([out, S] in torch 2.11 and 2.13) is stored in
the layer's attrs (`cslt_shape`), and the GEMM gets the stored bytes viewed back to exactly that
shape and dtype: `torch._cslt_sparse_mm` takes the weight's row count from dim 0 of a 2-D
operand. The GEMM is `torch._cslt_sparse_mm(W_c, x^T, bias, transpose_result=True, alg_id)`:
W [out, in] is the structured operand, x's rows the dense one, and the result comes out as
[rows, out] with the bias fused. Arguments go by keyword, and only those this torch's schema
has (`alg_id` and the split-K ones came in later releases). `alg_id` (and whether the bias
is fused) is chosen at the first (build-time, eager) call in a child process
(kiln/sparsity/cslt_search.py), because some cuSPARSELt searches poison the CUDA context; it
is stored in the layer's attrs, so a saved plan keeps it. A residual and the activation of a
fused conv epilogue, or a linear's fused epilogue, are applied in place right after. Eagerly each call costs
~1 ms of host time (cuSPARSELt plan set-up, issue 14); the runtime replays CUDA graphs, where
only the GPU time remains, and the builder times tactics inside graphs too.

Where cuSPARSELt cannot run (a GPU below compute capability 8.0, a torch without cuSPARSELt,
the CPU) the tactic is not offered, and kiln.load re-targets a plan built with it: the layer
gets a dense tactic and the dense pruned weight (_unprepare). Should the tactic run there all
the same (a plan run without kiln.load), it rebuilds the dense weight from the portable copy
and computes the same product densely, with a warning: never an error, never another answer.

The per-kind functions (gemm_layer_fns) are shared with the CUTLASS tactic
(sparse_gemm_cutlass.py): only the rows-times-weight GEMM differs between the two.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.ir.network import Layer
from kiln.engine.kernels.alignment import aligned_16
from kiln.engine.kernels.aten_matmul import finish_epilogue
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import finish_in_place
from kiln.engine.optimize.sparse_weights import AS_MATRIX, FROM_MATRIX, SPARSE_ATTR
from kiln.sparsity import cslt_search
from kiln.sparsity.packed import compressed_segment, pack_2to4, unpack_dense

NAME = "cusparselt_2to4"
# cuSPARSELt's dense operand: rows padded to a multiple of this (torch's own wrapper does the same for 16-bit types).
ROW_MULTIPLE = 8


@functools.cache
def sparse_cores(device: torch.device) -> bool:
    """cuSPARSELt runs here: a CUDA device of compute capability >= 8.0 and a torch built with cuSPARSELt."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    available = getattr(torch.backends, "cusparselt", None)
    return torch.cuda.get_device_capability(index) >= (8, 0) and available is not None and available.is_available()


def _info(layer) -> dict | None:
    return layer.attrs.get(SPARSE_ATTR)


def _offered(layer, target) -> bool:
    info = _info(layer)
    if info is None or info.get("reason") is not None:
        return False
    # Elsewhere kiln.load re-targets a plan built with it (builder/retarget.py): the layer gets a
    # dense tactic and the dense pruned weight, unpacked once by _unprepare.
    return target.is_cuda and sparse_cores(target.device)


def _prepare(layer, weights: dict) -> dict:
    name = layer.inputs[1]
    matrix = AS_MATRIX[layer.kind](weights[name]).contiguous()
    compressed = torch._cslt_compress(matrix) if sparse_cores(matrix.device) else None
    packed = pack_2to4(matrix, compressed)
    if compressed is not None:
        # What _cslt_sparse_mm must get back: the stored bytes are 1-D, this shape is 2-D in torch 2.11 and 2.13.
        _info(layer)["cslt_shape"] = [int(d) for d in compressed.shape]
    return {name: packed}


def _unprepare(layer, packed: torch.Tensor) -> torch.Tensor:
    # The dense pruned weight in its original shape, from the portable part: what another tactic reads.
    info = _info(layer)
    return FROM_MATRIX[layer.kind](unpack_dense(packed, info["rows"], info["cols"], dtype_from_name(info["dtype"])))


_warned: set[str] = set()
_search_lock = threading.Lock()


def warn_dense_fallback(layer, tactic: str, why: str) -> None:
    """Once per layer: a plan built with a sparse tactic computes densely here, and says why."""
    if layer.name not in _warned:
        _warned.add(layer.name)
        warnings.warn(
            f"kiln: layer {layer.name} was built with the {tactic}, but {why}: computing it densely with "
            "the same pruned weights (same result, no sparse speed-up). Compile again on this machine for its best tactics.",
            stacklevel=3,
        )


def dense_fallback(layer, rows: torch.Tensor, packed: torch.Tensor, bias, why: str) -> torch.Tensor:
    warn_dense_fallback(layer, "2:4 sparse tactic", why)
    info = _info(layer)
    weight = unpack_dense(packed, info["rows"], info["cols"], dtype_from_name(info["dtype"]))
    return F.linear(rows, weight.to(rows.dtype), bias)


@functools.cache
def mm_parameters() -> frozenset[str]:
    """The argument names of this torch's aten::_cslt_sparse_mm.

    They changed between releases: `alg_id` came later than the op, split-K came as
    `split_k, split_k_one_kernel` and became `split_k, split_k_mode`, and the positions after
    `bias` moved when `alpha` and `out_dtype` came in. So Kiln passes keywords, and only ones the schema has."""
    return frozenset(argument.name for argument in torch.ops.aten._cslt_sparse_mm.default._schema.arguments)


def mm_keywords(alg_id: int) -> dict:
    """The keyword arguments of the GEMM call besides the operands: the result transposed, the searched algorithm."""
    keywords = {"transpose_result": True}
    if "alg_id" in mm_parameters():
        keywords["alg_id"] = alg_id
    return keywords


def _choice(info: dict, rows: torch.Tensor, bias) -> tuple[int, bool]:
    """(alg_id, bias fused) for this layer: chosen once, at the first (build-time, eager) call, kept in the attrs.

    The choice is made in a child process (kiln/sparsity/cslt_search.py): cuSPARSELt's search
    can fail in ways that poison this process's CUDA context (FP16 with a bias and a transposed
    result, cuSPARSELt 0.8.0 on the H100), so it only ever runs here what ran right there."""
    if "alg_id" not in info:
        if torch.cuda.is_current_stream_capturing():
            return 0, True  # no search inside a capture; a built plan always has its choice by then
        with _search_lock:
            if "alg_id" not in info:
                device = rows.device
                if device.type == "cuda" and device.index is None:
                    device = torch.device("cuda", torch.cuda.current_device())
                problem = {"rows": info["rows"], "cols": info["cols"], "m": rows.shape[0], "dtype": info["dtype"]}
                answer = cslt_search.choose({**problem, "bias": bias is not None, "device": str(device)})
                info["fused_bias"] = answer["fused_bias"]
                info["cslt_choice"] = answer["attempt"]
                info["alg_id"] = answer["alg_id"]  # last: its presence means the choice is complete
    # Plans saved before the bias could be added after had it fused.
    return info["alg_id"], info.get("fused_bias", True)


def compressed_weight(info: dict, packed: torch.Tensor) -> torch.Tensor | None:
    """The compressed matrix inside `packed`, viewed to the shape and dtype torch._cslt_compress gave it; None if absent."""
    return compressed_segment(packed, info["rows"], info["cols"], dtype_from_name(info["dtype"]), info.get("cslt_shape"))


def sparse_rows_matmul(layer, rows: torch.Tensor, packed: torch.Tensor, bias) -> torch.Tensor:
    """rows [M, K] @ W^T (+ bias) -> [M, N] for the layer's packed 2:4 weight W [N, K]."""
    info = _info(layer)
    if info is None:
        raise ValueError(f"{NAME} runs only on layers marked by sparse_weights=True")
    if not sparse_cores(rows.device):
        return dense_fallback(layer, rows, packed, bias, f"{rows.device} has no sparse tensor cores usable by cuSPARSELt")
    compressed = compressed_weight(info, packed)
    if compressed is None:
        return dense_fallback(layer, rows, packed, bias, "its weight was packed without cuSPARSELt")
    compressed = aligned_16(compressed)
    m = rows.shape[0]
    pad = (-m) % ROW_MULTIPLE
    rows = F.pad(rows, (0, 0, 0, pad)) if pad else aligned_16(rows.contiguous())
    # [K, M] with strides [1, K]: cuSPARSELt reads it as the row-major [M, K] transposed, no copy.
    rows_t = rows.t()
    bias = aligned_16(bias.contiguous()) if bias is not None else None
    alg_id, fused_bias = _choice(info, rows, bias)
    out = torch._cslt_sparse_mm(compressed, rows_t, bias=bias if fused_bias else None, **mm_keywords(alg_id))
    if bias is not None and not fused_bias:
        out.add_(bias)  # [M, N] contiguous: one pass; a fused epilogue, if any, follows as another
    return out[:m] if pad else out


RowsMatmul = Callable[[Layer, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def gemm_layer_fns(rows_matmul: RowsMatmul) -> dict[str, Callable]:
    """The tactic function of each layer kind, given `rows_matmul(layer, rows [M, K], packed, bias) -> [M, N]`."""

    def linear(layer, inputs, run):
        x, packed, b, *extras = inputs
        rows = x.reshape(-1, x.shape[-1])
        # A fused epilogue (optimize/fuse_gemm_epilogue.py: a transformer's GELU, a residual add) follows
        # as one generated in-place pass, as after cuBLAS: without it, no FFN linear could go sparse.
        return finish_epilogue(layer, rows_matmul(layer, rows, packed, b).view(*x.shape[:-1], -1), extras, run)

    def matmul(layer, inputs, run):
        a, packed, bias = inputs
        alpha, beta = layer.attrs.get("alpha", 1), layer.attrs.get("beta", 1)
        rows = a.reshape(-1, a.shape[-1])
        # The sparse kernels fuse a per-output-column bias; addmm's general bias ([M, N], scaled) is added after.
        fused = bias is not None and bias.dim() == 1 and alpha == 1 and beta == 1
        out = rows_matmul(layer, rows, packed, bias if fused else None)
        if alpha != 1:
            out.mul_(alpha)
        if bias is not None and not fused and beta != 0:
            out = out + (bias if beta == 1 else beta * bias)
        return out.view(*a.shape[:-1], -1)

    def conv_rows(layer, x, packed, b):
        n, c, h, w = x.shape
        rows = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, c)
        out = rows_matmul(layer, rows, packed, b)
        # [N*H*W, Cout] is NHWC memory: hand it on as a channels-last NCHW tensor, as gemm_1x1 does.
        return out.view(n, h, w, out.shape[1]).permute(0, 3, 1, 2)

    def conv(layer, inputs, run):
        x, packed, b = inputs
        return conv_rows(layer, x, packed, b)

    def conv_epilogue(layer, inputs, run):
        x, packed, b, residual = inputs
        # y is this layer's own fresh output: residual and activation overwrite it in one generated pass.
        return finish_in_place(conv_rows(layer, x, packed, b), residual, layer.attrs)

    return {"linear": linear, "matmul": matmul, "conv": conv, "conv_epilogue": conv_epilogue}


def register_2to4_tactics(name: str, rows_matmul: RowsMatmul, when, prepare) -> None:
    """One tactic `name` for every GEMM-like kind the sparse_weights pass marks; all share the packed weight's unprepare."""
    for kind, fn in gemm_layer_fns(rows_matmul).items():
        takes = ("epilogue",) if kind == "linear" else ()
        tactic(kind, name, when=when, prepare=prepare, unprepare=_unprepare, takes=takes)(fn)


register_2to4_tactics(NAME, sparse_rows_matmul, _offered, _prepare)
