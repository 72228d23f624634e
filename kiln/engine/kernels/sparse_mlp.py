"""The `sparse_mlp` layer: linear -> [pointwise] -> linear [-> pointwise], both weights 2:4 (optimize/fuse_sparse_mlp.py).

Inputs: [x, w1, b1, w2, b2, *hidden extras, *output extras]; attrs["linears"] holds the two
linears' own attrs (their fused epilogues: the activation after the first, a residual add after
the second), attrs["hidden_inputs"] how many extras belong to the first.

Tactics:
- the reference and `dense_<linear tactic>`: both linears through one of the dense linear tactics
  (cuBLAS addmm with its generated epilogue pass, or a Triton GEMM tile), exactly what Kiln runs
  for the two linears unfused, so the builder can keep it wherever it is faster;
- `cusparselt_2to4_chain`: cuSPARSELt is fast only when it writes W @ X^T untransposed, as
  [N, M] row-major (on the H100, 1.33x and 1.37x over dense at BERT-large's FFN GEMMs; anything
  producing [M, N] was slower than dense, docs/benchmarks/2026-11-25-h100-session2/README.md). So
  the hidden activation never goes back to [M, F]:

      H^T = W1 @ X^T        [F, M]: X^T is X's rows seen column-major, no copy
      H^T = act(H^T + b1)   in place, one generated pass (the bias now varies along rows)
      Y^T = W2 @ H^T        [N, M]: H^T is exactly the row-major [K, M] operand cuSPARSELt takes
      Y   = epilogue((Y^T)^T + b2, residual)   one generated pass writes [M, N]

  (kernels/triton_transposed_epilogue.py). The biases go in those passes, which read and write
  every element anyway, rather than in cuSPARSELt's epilogue (the FP16 algorithm search with a
  bias fails on the H100, kiln/sparsity/cslt_search.py). Each GEMM's algorithm is searched in a
  child process for exactly this layout, at the first (build-time) call, and kept in the attrs,
  so a saved plan keeps it. The weights are stored as kiln.sparsity.packed's byte tensors, so a
  plan loaded where cuSPARSELt cannot run is re-targeted to a dense tactic (unprepare), and one
  run there anyway computes the same product densely, with a warning.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.ir.network import Layer
from kiln.engine.kernels import aten_matmul, sparse_gemm, triton_gemm  # noqa: F401  (the linear tactics the dense halves run)
from kiln.engine.kernels.alignment import aligned_16
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.matmul import linear_reference
from kiln.engine.kernels.registry import RunContext, get_tactic, reference, tactic
from kiln.engine.kernels.sparse_gemm import ROW_MULTIPLE, compressed_weight, mm_parameters, warn_dense_fallback
from kiln.engine.kernels.triton_transposed_epilogue import read_kinds, transposed_epilogue, triton
from kiln.engine.optimize.fuse_sparse_mlp import CHAIN_ATTR, KIND
from kiln.engine.runtime.executor import arena_output
from kiln.sparsity import cslt_search
from kiln.sparsity.packed import pack_2to4, unpack_dense

CHAIN = "cusparselt_2to4_chain"
# The dense linear tactics a dense MLP tactic runs both halves with (each a timed candidate).
DENSE_HALVES = ("aten_addmm", *triton_gemm.CONFIGS, *(triton_gemm.TMA_CONFIGS if triton_gemm.TensorDescriptor is not None else ()))
WEIGHT_INPUTS = (1, 3)


def parts(layer: Layer, inputs: list) -> tuple:
    """(x, w1, b1, w2, b2, hidden extras, output extras) of a sparse_mlp layer's inputs."""
    x, w1, b1, w2, b2, *extras = inputs
    k = layer.attrs["hidden_inputs"]
    return x, w1, b1, w2, b2, extras[:k], extras[k:]


def halves(layer: Layer) -> tuple[Layer, Layer]:
    """The two linear layers the MLP was fused from, with their own attrs (epilogues), for the linear tactics."""
    first, second = (Layer("linear", f"{layer.name}/{m['name']}", [], [], m["attrs"], layer.precision) for m in layer.attrs["linears"])
    return first, second


def _program(half: Layer) -> Program | None:
    program = half.attrs.get("epilogue")
    return Program.from_json(program) if program else None


def run_halves(layer: Layer, inputs: list, run, linear_tactic) -> torch.Tensor:
    x, w1, b1, w2, b2, hidden_extras, out_extras = parts(layer, inputs)
    first, second = halves(layer)
    # The hidden activation is this layer's own temporary: no arena slot, so the first half allocates it.
    hidden = linear_tactic(first, [x, w1, b1, *hidden_extras], RunContext(run.symbols))
    return linear_tactic(second, [hidden, w2, b2, *out_extras], run)


@reference(KIND)
def sparse_mlp_reference(layer, inputs, run):
    return run_halves(layer, inputs, run, linear_reference)


def _register_dense(name: str) -> None:
    def applies(layer, target) -> bool:
        half = get_tactic("linear", name)
        return all(half.when(h, target) for h in halves(layer))

    @tactic(KIND, f"dense_{name}", when=applies)
    def dense(layer, inputs, run):
        return run_halves(layer, inputs, run, get_tactic("linear", name).fn)


for _name in DENSE_HALVES:
    _register_dense(_name)


# ---------------------------------------------------------------- the transposed sparse chain


def _infos(layer: Layer) -> list[dict]:
    return layer.attrs[CHAIN_ATTR]


def _chain_offered(layer, target) -> bool:
    infos = layer.attrs.get(CHAIN_ATTR)
    if not infos or any(info.get("reason") is not None for info in infos):
        return False
    # Elsewhere kiln.load re-targets a plan built with it (builder/retarget.py), through _unprepare.
    return target.is_cuda and triton is not None and sparse_gemm.sparse_cores(target.device)


def _prepare(layer, weights: dict) -> dict:
    prepared = {}
    for index, info in zip(WEIGHT_INPUTS, _infos(layer)):
        name = layer.inputs[index]
        matrix = weights[name].contiguous()
        compressed = torch._cslt_compress(matrix) if sparse_gemm.sparse_cores(matrix.device) else None
        if compressed is not None:
            info["cslt_shape"] = [int(d) for d in compressed.shape]  # as kernels/sparse_gemm.py: the operand's 2-D shape
        prepared[name] = pack_2to4(matrix, compressed)
    return prepared


def _unprepare(layer, packed: torch.Tensor) -> torch.Tensor:
    # retarget.py restores one weight at a time: the one whose input no longer names a prepared copy.
    from kiln.engine.builder.build import original_name

    still_prepared = original_name(layer.inputs[WEIGHT_INPUTS[0]], CHAIN) is not None
    info = _infos(layer)[1 if still_prepared else 0]
    return unpack_dense(packed, info["rows"], info["cols"], dtype_from_name(info["dtype"]))


_search_lock = threading.Lock()


def _algorithm(info: dict, m: int, device: torch.device, dense_row_major: bool) -> int:
    """cuSPARSELt's algorithm for one GEMM of the chain, searched once for its layout (in a child process), kept in the attrs."""
    if "alg_id" not in info:
        if torch.cuda.is_current_stream_capturing():
            return 0  # no search inside a capture; a built plan always has its choice by then
        with _search_lock:
            if "alg_id" not in info:
                if device.type == "cuda" and device.index is None:
                    device = torch.device("cuda", torch.cuda.current_device())
                problem = {"rows": info["rows"], "cols": info["cols"], "m": m, "dtype": info["dtype"], "bias": False,
                           "device": str(device), "transpose_result": False, "dense_row_major": dense_row_major}  # fmt: skip
                answer = cslt_search.choose(problem)
                info["cslt_choice"] = answer["attempt"]
                info["alg_id"] = answer["alg_id"]  # last: its presence means the choice is complete
    return info["alg_id"]


def _untransposed(compressed: torch.Tensor, dense: torch.Tensor, alg_id: int) -> torch.Tensor:
    keywords = {"transpose_result": False}
    if "alg_id" in mm_parameters():
        keywords["alg_id"] = alg_id
    return torch._cslt_sparse_mm(compressed, dense, **keywords)


def _dense_fallback(layer, inputs, run, why: str) -> torch.Tensor:
    warn_dense_fallback(layer, "2:4 sparse MLP chain", why)
    dense = list(inputs)
    for index, info in zip(WEIGHT_INPUTS, _infos(layer)):
        dense[index] = unpack_dense(inputs[index], info["rows"], info["cols"], dtype_from_name(info["dtype"])).to(inputs[0].dtype)
    return run_halves(layer, dense, run, linear_reference)


@tactic(KIND, CHAIN, when=_chain_offered, prepare=_prepare, unprepare=_unprepare)
def sparse_mlp_chain(layer, inputs, run):
    x, p1, b1, p2, b2, hidden_extras, out_extras = parts(layer, inputs)
    info1, info2 = _infos(layer)
    if not sparse_gemm.sparse_cores(x.device) or triton is None:
        return _dense_fallback(layer, inputs, run, f"{x.device} has no sparse tensor cores usable by cuSPARSELt")
    c1, c2 = compressed_weight(info1, p1), compressed_weight(info2, p2)
    if c1 is None or c2 is None:
        return _dense_fallback(layer, inputs, run, "its weights were packed without cuSPARSELt")
    first, second = halves(layer)
    rows = x.reshape(-1, x.shape[-1])
    m, features, n = rows.shape[0], info1["rows"], info2["rows"]
    out_shape = (*x.shape[:-1], n)
    if read_kinds(hidden_extras, (*x.shape[:-1], features)) is None or read_kinds(out_extras, out_shape) is None:
        raise ValueError(f"{CHAIN} reads epilogue inputs of the result's shape or along its features only")
    pad = (-m) % ROW_MULTIPLE
    # cuSPARSELt's dense operand: rows padded to a multiple of 8; the padded columns of H^T and Y^T are never read back.
    rows = F.pad(rows, (0, 0, 0, pad)) if pad else aligned_16(rows.contiguous())
    alg1 = _algorithm(info1, m + pad, x.device, dense_row_major=False)
    alg2 = _algorithm(info2, m + pad, x.device, dense_row_major=True)
    hidden_t = _untransposed(aligned_16(c1), rows.t(), alg1)  # [F, M + pad]
    transposed_epilogue(hidden_t, b1, _program(first), hidden_extras, hidden_t.t()[:m], (*x.shape[:-1], features))
    out_t = _untransposed(aligned_16(c2), hidden_t, alg2)  # [N, M + pad]
    out = arena_output(run, 0)
    if out is None or tuple(out.shape) != out_shape or not out.is_contiguous() or out.dtype != x.dtype:
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    transposed_epilogue(out_t, b2, _program(second), out_extras, out.view(m, n), out_shape)
    return out
