"""The cuSPARSELt tactic's wiring, on the CPU: the compressed operand goes back to the kernel as _cslt_compress gave it.

torch 2.11's _cslt_sparse_mm asserts a 2-D compressed operand and reads the weight's rows from
its dim 0; a 1-D slice of the packed bytes failed every sparse GEMM on the H100. Here a fake
cuSPARSELt with that contract (FakeCusparseLt: compress returns [rows, S] of the input's dtype
with S unlike 9/16 of cols, the GEMM checks its operands as torch does and computes densely
from the matrix it was compressed from) stands in for the library, so the tactic's prepare,
pack, unpack, call arguments, search and row padding run without a GPU. The real kernels are
checked in tests/gpu/test_sparse.py.
"""

from types import SimpleNamespace

import pytest
import torch

import kiln.engine.kernels  # noqa: F401
from kiln.engine.ir.network import Layer
from kiln.engine.kernels import sparse_gemm
from kiln.engine.kernels.registry import REFERENCE, RunContext, get_tactic
from kiln.engine.optimize.sparse_weights import AS_MATRIX, SPARSE_ATTR
from kiln.errors import CorruptFileError
from kiln.serialize.weights import pack_weights, unpack_weights
from kiln.sparsity import cslt_search, mask_2to4
from kiln.sparsity.packed import ALIGN, compressed_segment, pack_2to4, portable_bytes, unpack_dense
from tests.helpers import relative_error

CONV = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}
SCHEMA = frozenset(a.name for a in torch.ops.aten._cslt_sparse_mm.default._schema.arguments)


def _pruned(*shape, dtype=torch.float16):
    w = torch.randn(*shape)
    return (w * mask_2to4(w)).to(dtype)


def _cslt_like(rows: int, cols: int, dtype: torch.dtype, extra: int = 3) -> torch.Tensor:
    # cuSPARSELtOps.cpp: new_empty({rows, ceil(compressed_size / (rows * itemsize))}); `extra` makes S unlike cols * 9 / 16.
    return torch.randn(rows, cols * 9 // 16 + extra).to(dtype)


class FakeCusparseLt:
    """torch._cslt_compress / _cslt_sparse_mm / _cslt_sparse_mm_search with torch 2.11's contract on operands."""

    def __init__(self):
        self.compressed: list[tuple[torch.Tensor, torch.Tensor]] = []  # (what compress returned, the dense matrix)
        self.searches = 0
        self.calls: list[dict] = []

    def compress(self, matrix: torch.Tensor) -> torch.Tensor:
        assert matrix.dim() == 2 and matrix.is_contiguous()
        # Shifted by the count: two compressions from the same random state must still differ (the fake finds its matrix by value).
        out = _cslt_like(*matrix.shape, matrix.dtype) + len(self.compressed)
        self.compressed.append((out, matrix.clone()))
        return out

    def _matrix(self, compressed_A: torch.Tensor) -> torch.Tensor:
        assert compressed_A.dim() == 2, "compressed_A.dim() == 2 INTERNAL ASSERT FAILED"  # torch 2.11, cuSPARSELtOps.cpp
        assert compressed_A.data_ptr() % 16 == 0
        for stored, matrix in self.compressed:
            if stored.shape == compressed_A.shape and stored.dtype == compressed_A.dtype and torch.equal(stored, compressed_A):
                return matrix
        raise AssertionError(f"not a tensor _cslt_compress returned: {list(compressed_A.shape)} {compressed_A.dtype}")

    def sparse_mm(self, compressed_A, dense_B, bias=None, **keywords):
        assert set(keywords) <= SCHEMA, f"keywords {sorted(set(keywords) - SCHEMA)} are not in this torch's schema"
        self.calls.append(keywords)
        matrix = self._matrix(compressed_A)
        m = compressed_A.size(0)  # as torch: the rows come from dim 0
        k, n = dense_B.shape
        assert (m, k) == tuple(matrix.shape) and n % 8 == 0 and dense_B.dtype == compressed_A.dtype
        out = matrix.float() @ dense_B.float()
        if bias is not None:
            assert bias.shape == (m,)
            out = out + bias.float()[:, None]
        out = out.to(dense_B.dtype)
        return out.t().contiguous() if keywords.get("transpose_result") else out  # [n, m], as torch allocates it

    def search(self, compressed_A, dense_B, bias=None, transpose_result=False):
        self.searches += 1
        self.sparse_mm(compressed_A, dense_B, bias, transpose_result=transpose_result)
        return 3


@pytest.fixture
def fake(monkeypatch):
    fake = FakeCusparseLt()
    monkeypatch.setattr(sparse_gemm, "sparse_cores", lambda device: True)  # as on an H100 with cuSPARSELt
    monkeypatch.setattr(torch, "_cslt_compress", fake.compress)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", fake.sparse_mm)
    monkeypatch.setattr(torch, "_cslt_sparse_mm_search", fake.search)
    monkeypatch.delattr(torch._C, "_cusparselt", raising=False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # a CPU-only torch cannot answer it
    # The child process's work, in this process against the fake (a child would not see the fake).
    monkeypatch.setattr(cslt_search, "ask", cslt_search.run_request)
    monkeypatch.setattr(cslt_search, "_cache", {})
    return fake


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", ["2d", "1d"])
def test_the_compressed_segment_views_back_to_the_shape_and_dtype_compress_returned(dtype, form):
    torch.manual_seed(0)
    rows, cols = 48, 64
    w = _pruned(rows, cols, dtype=dtype)
    compressed = _cslt_like(rows, cols, dtype)
    if form == "1d":  # what torch releases before the 2-D operand returned: rows * cols * 9 / 16 elements
        compressed = torch.randn(rows * cols * 9 // 16).to(dtype)
    packed = pack_2to4(w, compressed)
    segment = compressed_segment(packed, rows, cols, dtype, list(compressed.shape))
    assert segment.shape == compressed.shape and segment.dtype == dtype and torch.equal(segment, compressed)
    # A view of the packed bytes (no copy), starting aligned, and the portable part is untouched.
    assert segment.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()
    assert segment.data_ptr() - packed.data_ptr() == portable_bytes(rows, cols, dtype) and portable_bytes(rows, cols, dtype) % ALIGN == 0
    assert torch.equal(unpack_dense(packed, rows, cols, dtype), w)


def test_without_a_recorded_shape_the_segment_is_rows_by_s_and_a_wrong_shape_is_a_clear_error():
    rows, cols = 32, 64
    compressed = _cslt_like(rows, cols, torch.float16)
    packed = pack_2to4(_pruned(rows, cols), compressed)
    assert torch.equal(compressed_segment(packed, rows, cols, torch.float16), compressed)  # a plan saved before cslt_shape
    with pytest.raises(CorruptFileError, match="recorded shape"):
        compressed_segment(packed, rows, cols, torch.float16, [rows, compressed.shape[1] + 1])
    with pytest.raises(CorruptFileError, match="recorded shape"):
        compressed_segment(packed, rows, cols, torch.float16, [compressed.shape[1], rows])  # dim 0 must be the rows


@pytest.mark.parametrize(
    ("compressed", "problem"),
    [
        (torch.zeros(32, 40, dtype=torch.bfloat16), "dtype"),
        (torch.zeros(16, 80, dtype=torch.float16), "neither 1-D"),
        (torch.zeros(32, 8, dtype=torch.float16), "fewer than"),
    ],
)
def test_pack_refuses_what_cannot_be_the_compressed_form(compressed, problem):
    with pytest.raises(ValueError, match=problem):
        pack_2to4(_pruned(32, 64), compressed)


def _mark(layer: Layer, weight: torch.Tensor) -> Layer:
    rows, cols = AS_MATRIX[layer.kind](weight).shape
    dtype = str(weight.dtype).removeprefix("torch.")
    layer.attrs[SPARSE_ATTR] = {"rows": rows, "cols": cols, "dtype": dtype, "pattern": True, "reason": None}
    return layer


def _h(*shape):
    return torch.randn(*shape, dtype=torch.float16)


CASES = {
    "linear_ragged_rows": (Layer("linear", "l", ["x", "w", "b"], ["y"]), lambda: [_h(3, 11, 64), _pruned(48, 64), _h(48)]),
    "linear_no_bias": (Layer("linear", "l", ["x", "w", None], ["y"]), lambda: [_h(16, 64), _pruned(32, 64), None]),
    "addmm": (
        Layer("matmul", "m", ["a", "b", "c"], ["y"], {"alpha": 1, "beta": 1}),
        lambda: [_h(10, 64), _pruned(32, 64).t().contiguous(), _h(32)],
    ),
    "conv_1x1_add_relu": (
        Layer("conv_epilogue", "c", ["x", "w", "b", "r"], ["y"], {**CONV, "activation": "relu", "residual": True}),
        lambda: [_h(2, 64, 3, 5), _pruned(32, 64)[..., None, None], _h(32), _h(2, 32, 3, 5)],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_the_tactic_hands_cuslt_the_compressed_tensor_as_compress_returned(case, fake):
    torch.manual_seed(0)
    layer, make = CASES[case]
    inputs = make()
    layer = _mark(Layer(layer.kind, layer.name, list(layer.inputs), list(layer.outputs), dict(layer.attrs)), inputs[1])
    sparse = get_tactic(layer.kind, sparse_gemm.NAME)
    packed = sparse.prepare(layer, {layer.inputs[1]: inputs[1]})[layer.inputs[1]]
    info = layer.attrs[SPARSE_ATTR]
    returned = fake.compressed[0][0]
    assert info["cslt_shape"] == list(returned.shape) and packed.dim() == 1  # stored flat, its shape in the attrs
    run = RunContext({})
    expected = get_tactic(layer.kind, REFERENCE).fn(layer, inputs, run).float()
    for _ in range(2):
        out = sparse.fn(layer, [inputs[0], packed, *inputs[2:]], run)
        assert out.shape == expected.shape and out.dtype == torch.float16
        assert relative_error(out.float(), expected) < 5e-3
    # Searched once, at the first call (in the "child", on operands of the layer's shape), kept in the attrs.
    assert fake.searches == 1 and info["alg_id"] == 3 and info["fused_bias"] is True
    assert all(call.get("transpose_result") is True for call in fake.calls)
    if "alg_id" in SCHEMA:
        assert fake.calls[-1]["alg_id"] == 3
    assert torch.equal(sparse.unprepare(layer, packed), inputs[1])


def test_the_search_prefers_torchs_mm_search_binding(fake, monkeypatch):
    found = []

    def mm_search(compressed_A, dense_B, bias, alpha, out_dtype, transpose_result):
        found.append((compressed_A.dim(), bias, alpha, out_dtype, transpose_result))
        fake.sparse_mm(compressed_A, dense_B, bias, transpose_result=transpose_result)
        return 5, 2, 1, 9  # alg_id, split_k, split-K mode, max alg_id

    monkeypatch.setattr(torch._C, "_cusparselt", SimpleNamespace(mm_search=mm_search), raising=False)
    w = _pruned(32, 64)
    layer = _mark(Layer("linear", "l", ["x", "w", "b"], ["y"]), w)
    sparse = get_tactic("linear", sparse_gemm.NAME)
    packed = sparse.prepare(layer, {"w": w})["w"]
    sparse.fn(layer, [_h(8, 64), packed, _h(32)], RunContext({}))
    # FP16 with a bias: the search runs without the bias (with it, cuSPARSELt 0.8.0 fails on the H100).
    assert found == [(2, None, None, None, True)] and fake.searches == 0
    assert layer.attrs[SPARSE_ATTR]["alg_id"] == 5 and set(fake.calls[-1]) <= {"transpose_result", "alg_id"}  # split-K not passed


def test_a_saved_and_loaded_packed_weight_still_views_to_the_compressed_shape(fake):
    w = _pruned(32, 64)
    layer = _mark(Layer("linear", "l", ["x", "w", None], ["y"]), w)
    packed = get_tactic("linear", sparse_gemm.NAME).prepare(layer, {"w": w})["w"]
    blob, orders = pack_weights({"w": packed})
    loaded = unpack_weights(blob, orders, torch.device("cpu"))["w"]
    info = layer.attrs[SPARSE_ATTR]
    returned = fake.compressed[0][0]
    assert torch.equal(sparse_gemm.compressed_weight(info, loaded), returned)
    x = _h(8, 64)
    out = get_tactic("linear", sparse_gemm.NAME).fn(layer, [x, loaded, None], RunContext({}))
    assert relative_error(out.float(), x.float() @ w.float().t()) < 5e-3
