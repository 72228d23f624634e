"""The 2:4 tactic off the sparse GPUs: its packed weight, and its dense fallback against each kind's reference.

On the CPU (and on GPUs without sparse tensor cores) the tactic rebuilds the dense pruned
weight from the portable part of its packed weight; that must equal the reference tactic with
the pruned weight, for every layer kind it serves. The cuSPARSELt path is checked in
tests/gpu/test_sparse.py.
"""

import pytest
import torch

import kiln.engine.kernels  # noqa: F401
from kiln.engine.ir.network import Layer
from kiln.engine.kernels import sparse_gemm
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, RunContext, get_tactic, tactics_for
from kiln.engine.optimize.sparse_weights import AS_MATRIX, SPARSE_ATTR
from kiln.sparsity import mask_2to4
from kiln.sparsity.packed import compressed_segment, pack_2to4, portable_bytes, unpack_dense

CONV = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}


def _pruned(*shape, dtype=torch.float32):
    w = torch.randn(*shape)
    return (w * mask_2to4(w)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_packed_weight_round_trips_to_the_dense_pruned_matrix(dtype):
    torch.manual_seed(0)
    w = _pruned(48, 64, dtype=dtype)
    w[0, :4] = 0  # a group with no non-zero
    w[1, :4] = torch.tensor([0, 0, 0, 3.0], dtype=dtype)  # and one with a single one, at the last position
    packed = pack_2to4(w)
    assert packed.dtype == torch.uint8 and packed.numel() == portable_bytes(48, 64, dtype)
    assert torch.equal(unpack_dense(packed, 48, 64, dtype), w)
    assert compressed_segment(packed, 48, 64, dtype) is None


def test_packed_weight_carries_the_compressed_matrix_as_an_aligned_view():
    w = _pruned(32, 32, dtype=torch.float16)
    stand_in = torch.arange(32 * 18, dtype=torch.float16).view(32, 18)  # the [rows, S] _cslt_compress returns
    packed = pack_2to4(w, stand_in)
    segment = compressed_segment(packed, 32, 32, torch.float16, [32, 18])
    assert torch.equal(segment, stand_in) and segment.data_ptr() % 256 == packed.data_ptr() % 256
    assert torch.equal(unpack_dense(packed, 32, 32, torch.float16), w)


def test_pack_refuses_a_matrix_that_is_not_2to4():
    with pytest.raises(ValueError, match="not 2:4"):
        pack_2to4(torch.ones(4, 8))


def _mark(layer: Layer, weight: torch.Tensor) -> Layer:
    rows, cols = AS_MATRIX[layer.kind](weight).shape
    layer.attrs[SPARSE_ATTR] = {"rows": rows, "cols": cols, "dtype": "float32", "pattern": True, "reason": None}
    return layer


def _cases():
    torch.manual_seed(0)
    linear_w = _pruned(32, 64)
    matmul_b = _pruned(48, 32).t().contiguous()  # [K=32, N=48], 2:4 along K
    conv_w = _pruned(40, 32).reshape(40, 32, 1, 1)
    return {
        "linear": (Layer("linear", "l", ["x", "w", "b"], ["y"]), [torch.randn(2, 5, 64), linear_w, torch.randn(32)]),
        "linear_no_bias": (Layer("linear", "l", ["x", "w", None], ["y"]), [torch.randn(7, 64), linear_w, None]),
        "matmul": (Layer("matmul", "m", ["a", "b", None], ["y"]), [torch.randn(3, 6, 32), matmul_b, None]),
        "addmm_scaled": (
            Layer("matmul", "m", ["a", "b", "c"], ["y"], {"alpha": 0.5, "beta": 2.0}),
            [torch.randn(6, 32), matmul_b, torch.randn(6, 48)],
        ),
        "addmm_row_bias": (
            Layer("matmul", "m", ["a", "b", "c"], ["y"], {"alpha": 1, "beta": 1}),
            [torch.randn(6, 32), matmul_b, torch.randn(48)],
        ),
        "conv_1x1": (Layer("conv", "c", ["x", "w", "b"], ["y"], dict(CONV)), [torch.randn(2, 32, 5, 3), conv_w, torch.randn(40)]),
        "conv_1x1_add_relu": (
            Layer("conv_epilogue", "c", ["x", "w", "b", "r"], ["y"], {**CONV, "activation": "relu", "residual": True}),
            [torch.randn(2, 32, 5, 3), conv_w, torch.randn(40), torch.randn(2, 40, 5, 3)],
        ),
        "conv_1x1_silu": (
            Layer("conv_epilogue", "c", ["x", "w", None, None], ["y"], {**CONV, "activation": "silu", "residual": False}),
            [torch.randn(1, 32, 4, 4), conv_w, None, None],
        ),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_dense_fallback_equals_the_reference_with_the_pruned_weight(case, monkeypatch):
    layer, inputs = _cases()[case]
    layer = _mark(layer, inputs[1])
    sparse = get_tactic(layer.kind, sparse_gemm.NAME)
    packed = sparse.prepare(layer, {layer.inputs[1]: inputs[1]})[layer.inputs[1]]
    run = RunContext({})
    expected = get_tactic(layer.kind, REFERENCE).fn(layer, inputs, run)
    monkeypatch.setattr(sparse_gemm, "_warned", set())
    with pytest.warns(UserWarning, match="computing it densely with the same pruned weights"):
        got = sparse.fn(layer, [inputs[0], packed, *inputs[2:]], run)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # A loaded plan that gives the layer to another tactic gets the original weight back, exactly.
    assert torch.equal(sparse.unprepare(layer, packed), inputs[1])


def test_offered_only_for_marked_qualifying_layers_on_sparse_gpus(monkeypatch):
    layer, inputs = _cases()["linear"]
    cpu, gpu = BuildTarget(torch.device("cpu"), torch.float16), BuildTarget(torch.device("cuda", 0), torch.float16)
    monkeypatch.setattr(sparse_gemm, "sparse_cores", lambda device: device.type == "cuda")  # as on an A100/H100

    def offered(target):
        return sparse_gemm.NAME in [t.name for t in tactics_for(layer, target)]

    assert not offered(gpu)  # not marked by the sparse_weights pass
    _mark(layer, inputs[1])
    assert offered(gpu) and not offered(cpu)
    layer.attrs[SPARSE_ATTR]["reason"] = "outputs 60 not a multiple of 16"
    assert not offered(gpu)


def test_cutlass_tactic_stores_the_layout_torch_decodes_and_falls_back_densely_off_8x_gpus(monkeypatch):
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_to_dense_cutlass

    from kiln.engine.kernels import sparse_gemm_cutlass as cutlass

    torch.manual_seed(0)
    w = _pruned(64, 128, dtype=torch.float16)
    layer = Layer("linear", "l", ["x", "w", "b"], ["y"])
    layer.attrs[SPARSE_ATTR] = {"rows": 64, "cols": 128, "dtype": "float16", "pattern": True, "reason": None}
    tactic = get_tactic("linear", cutlass.NAME)
    packed = tactic.prepare(layer, {"w": w})["w"]
    values, meta = cutlass.cutlass_parts(packed, 64, 128, torch.float16)
    assert values.shape == (64, 64) and meta.shape == (64, 8) and meta.dtype == torch.int16
    assert torch.equal(sparse_semi_structured_to_dense_cutlass(values, meta), w)
    assert torch.equal(tactic.unprepare(layer, packed), w)
    x, b = torch.randn(5, 128, dtype=torch.float16), torch.randn(64, dtype=torch.float16)
    monkeypatch.setattr(sparse_gemm, "_warned", set())
    with pytest.warns(UserWarning, match="CUTLASS sparse kernels"):
        got = tactic.fn(layer, [x, packed, b], RunContext({}))
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, b))
    # Not offered off the 8.x GPUs: a plan built with it is re-targeted there instead.
    assert cutlass.NAME not in [t.name for t in tactics_for(layer, BuildTarget(torch.device("cpu"), torch.float16))]
