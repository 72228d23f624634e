"""Generated kernels that read a concat's pieces where they lie, and a frozen BatchNorm as per-channel FP32
arithmetic, against the fused layer's reference (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels.codegen.program import Program, emit
from kiln.engine.kernels.fused_pointwise import fused_pointwise_reference, run_generated
from kiln.engine.kernels.registry import RunContext
from kiln.lowering.fold_batch_norm import batch_norm_scale_shift

pytest.importorskip("triton")
RUN = RunContext({})
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_both(ops: list[dict], inputs: list[torch.Tensor], out_dtype: str):
    program = Program(len(inputs), tuple(ops), (len(inputs) + len(ops) - 1,))
    layer = Layer("fused_pointwise", "f", [], [], {"program": program.to_json(), "out_dtypes": [out_dtype]})
    inputs = [x.to(DEVICE) for x in inputs]
    ref = fused_pointwise_reference(layer, inputs, RUN)
    (got,) = run_generated(program, inputs, [getattr(torch, out_dtype)], [None])
    return got, ref


def bn_vectors(c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    gamma, beta = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    mean, var = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
    scale, shift = batch_norm_scale_shift(gamma, beta, mean, var, 1e-5)
    return (gamma, beta, mean, var), scale.float().reshape(c, 1, 1), shift.float().reshape(c, 1, 1)


def concat_bn_relu_ops(pieces: int, dim: int = 1) -> list[dict]:
    # Inputs: the pieces, then scale and shift. Op values follow.
    n = pieces + 2
    return [
        {"kind": "concat", "op": "concat", "args": list(range(pieces)), "attrs": {"dim": dim}},
        {"kind": "binary", "op": "mul", "args": [n, pieces], "attrs": {"op": "mul"}},
        {"kind": "binary", "op": "add", "args": [n + 1, pieces + 1], "attrs": {"op": "add"}},
        {"kind": "cast", "op": "cast", "args": [n + 2], "attrs": {"dtype": "float16"}},
        {"kind": "unary", "op": "relu", "args": [n + 3], "attrs": {"op": "relu"}},
    ]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("channels", [[3, 5], [4, 1, 6], [2, 7, 3, 8]], ids=["2", "3", "4"])
def test_concat_bn_relu_reads_pieces_in_place(channels, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    pieces = [torch.randn(2, c, 3, 5).half().contiguous(memory_format=fmt) for c in channels]
    _, scale, shift = bn_vectors(sum(channels), 1)
    got, ref = run_both(concat_bn_relu_ops(len(pieces)), [*pieces, scale, shift], "float16")
    assert got.shape == ref.shape == (2, sum(channels), 3, 5)
    assert got.is_contiguous(memory_format=fmt)
    # One FP32 multiply-add rounded once to FP16 in both: equal but for the FMA's last bit.
    torch.testing.assert_close(got.cpu(), ref.cpu(), rtol=1e-3, atol=1e-3)


def test_concat_alone_is_exact_along_any_dim_and_with_a_strided_piece():
    torch.manual_seed(1)
    a = torch.randn(2, 3, 4, 5)
    b = torch.randn(2, 3, 5, 4).transpose(2, 3)  # a view: read through its strides
    c = torch.randn(2, 3, 2, 5)
    ops = [{"kind": "concat", "op": "concat", "args": [0, 1, 2], "attrs": {"dim": 2}}]
    got, ref = run_both(ops, [a, b, c], "float32")
    assert torch.equal(got.cpu(), ref.cpu())


def test_concat_then_a_binary_with_a_whole_input():
    torch.manual_seed(2)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    other = torch.randn(2, 8, 4, 4)
    ops = [
        {"kind": "concat", "op": "concat", "args": [0, 1], "attrs": {"dim": 1}},
        {"kind": "binary", "op": "add", "args": [3, 2], "attrs": {"op": "add"}},
    ]
    got, ref = run_both(ops, [a, b, other], "float32")
    assert torch.equal(got.cpu(), ref.cpu())


@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
def test_batch_norm_as_fp32_affine_matches_the_norm(relu):
    torch.manual_seed(3)
    x = torch.randn(2, 6, 4, 4).half()
    stats, scale, shift = bn_vectors(6, 4)
    ops = [
        {"kind": "binary", "op": "mul", "args": [0, 1], "attrs": {"op": "mul"}},
        {"kind": "binary", "op": "add", "args": [3, 2], "attrs": {"op": "add"}},
        {"kind": "cast", "op": "cast", "args": [4], "attrs": {"dtype": "float16"}},
    ]
    if relu:
        ops.append({"kind": "unary", "op": "relu", "args": [5], "attrs": {"op": "relu"}})
    got, ref = run_both(ops, [x, scale, shift], "float16")
    torch.testing.assert_close(got.cpu(), ref.cpu(), rtol=1e-3, atol=1e-3)
    # And both are the norm itself, computed in FP32 and rounded once.
    gamma, beta, mean, var = stats
    norm = torch.nn.functional.batch_norm(x.float(), mean, var, gamma, beta, False, 0.0, 1e-5)
    norm = (torch.relu(norm) if relu else norm).half()
    torch.testing.assert_close(got.cpu(), norm, rtol=1e-3, atol=1e-3)


def test_templates_without_an_index_refuse_a_concat():
    ops = ({"kind": "concat", "op": "concat", "args": [0, 1], "attrs": {"dim": 1}},)
    with pytest.raises(KeyError, match="reads its pieces in place"):
        emit(Program(2, ops, (2,)), ["a", "b"])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_joined_first_tactic_concats_then_runs_the_rest_as_one_kernel(channels_last):
    # The two-pass floor the in-place read must beat: torch.cat, then the generated rest of the group.
    from kiln.engine.kernels.codegen.program import evaluate
    from kiln.engine.kernels.fused_pointwise import fused_pointwise_joined_first, without_concats

    torch.manual_seed(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    channels = [2, 7, 3]
    pieces = [torch.randn(2, c, 3, 5).half().contiguous(memory_format=fmt).to(DEVICE) for c in channels]
    _, scale, shift = bn_vectors(sum(channels), 2)
    inputs = [*pieces, scale.to(DEVICE), shift.to(DEVICE)]
    ops = concat_bn_relu_ops(len(pieces))
    program = Program(len(inputs), tuple(ops), (len(inputs) + len(ops) - 1,))
    rest, joined_inputs = without_concats(program, inputs)
    assert rest.num_inputs == 3 and len(rest.ops) == len(ops) - 1 and all(op["kind"] != "concat" for op in rest.ops)
    assert joined_inputs[-1].is_contiguous(memory_format=fmt)
    torch.testing.assert_close(evaluate(rest, joined_inputs, RUN)[0], evaluate(program, inputs, RUN)[0], rtol=0, atol=0)
    layer = Layer("fused_pointwise", "f", [], [], {"program": program.to_json(), "out_dtypes": ["float16"]})
    got = fused_pointwise_joined_first(layer, inputs, RUN)
    ref = fused_pointwise_reference(layer, inputs, RUN)
    torch.testing.assert_close(got.cpu(), ref.cpu(), rtol=1e-3, atol=1e-3)
