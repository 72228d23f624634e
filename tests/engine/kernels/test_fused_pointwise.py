"""The generated pointwise kernel against the fused layer's reference (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.elementwise import BINARY_TRITON
from kiln.engine.kernels.fused_pointwise import fused_pointwise_reference, run_generated
from kiln.engine.kernels.pointwise import UNARY_OPS, UNARY_TRITON
from kiln.engine.kernels.registry import RunContext

pytest.importorskip("triton")
RUN = RunContext({})
UNARY_ATTRS = {
    "leaky_relu": {"alpha": 0.1},
    "elu": {"alpha": 1.2, "scale": 1.1, "input_scale": 0.9},
    "softplus": {"beta": 1.5, "threshold": 3.0},
    "clamp": {"min": -0.5, "max": 0.7},
}
# Binary ops the converters give a scalar second operand (aten's .Scalar overloads).
SCALAR_OPERAND = {"add", "sub", "mul", "div", "fmod", "pow", "eq", "ne", "lt", "le", "gt", "ge"}
# Ops defined only on part of the line get inputs there.
POSITIVE = {"sqrt", "rsqrt", "log", "log2", "log10", "log1p", "reciprocal"}
INSIDE_UNIT = {"asin", "acos", "atanh"}
ABOVE_ONE = {"acosh"}


def fused(ops: list[dict], num_inputs: int, outputs: list[int], out_dtypes: list[str]) -> Layer:
    program = Program(num_inputs, tuple(ops), tuple(outputs))
    return Layer("fused_pointwise", "f", [], [], {"program": program.to_json(), "out_dtypes": out_dtypes})


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check(layer: Layer, inputs: list[torch.Tensor], tol: float):
    # Built on the CPU (same random values everywhere), run where Triton runs: the GPU, else its interpreter.
    inputs = [x.to(DEVICE) for x in inputs]
    ref = fused_pointwise_reference(layer, inputs, RUN)
    dtypes = [getattr(torch, d) for d in layer.attrs["out_dtypes"]]
    got = run_generated(Program.from_json(layer.attrs["program"]), inputs, dtypes, [None] * len(dtypes))
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    for g, r in zip(got, refs):
        assert g.shape == r.shape and g.dtype == r.dtype
        if r.dtype == torch.bool:
            assert torch.equal(g, r)
        else:
            torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol)
    return got


@pytest.mark.parametrize("op", sorted(UNARY_TRITON))
def test_every_unary_op(op):
    assert op in UNARY_OPS
    torch.manual_seed(0)
    x = torch.randn(3, 37) * 2
    if op in POSITIVE:
        x = torch.rand(3, 37) * 4 + 0.1
    elif op in INSIDE_UNIT:
        x = torch.rand(3, 37) * 1.8 - 0.9
    elif op in ABOVE_ONE:
        x = torch.rand(3, 37) * 4 + 1.1
    ops = [{"kind": "unary", "op": op, "args": [0], "attrs": {"op": op, **UNARY_ATTRS.get(op, {})}}]
    check(fused(ops, 1, [1], ["float32"]), [x], 1e-4)


@pytest.mark.parametrize("op", sorted(BINARY_TRITON))
def test_every_binary_op_with_broadcast_and_scalar(op):
    torch.manual_seed(0)
    a = torch.rand(4, 5, 6) + 0.5
    b = torch.rand(5, 1) + 0.5
    is_bool = op in ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or")
    if op in ("eq", "ne"):
        b = torch.round(b * 2) / 2
        a = torch.round(a * 2) / 2
    ops = [{"kind": "binary", "op": op, "args": [0, 1], "attrs": {"op": op}}]
    if op in SCALAR_OPERAND:
        ops.append({"kind": "binary", "op": op, "args": [0], "attrs": {"op": op, "scalar": 0.75}})
    dtype = "bool" if is_bool else "float32"
    check(fused(ops, 2, list(range(2, 2 + len(ops))), [dtype] * len(ops)), [a, b], 1e-4)


def test_add_with_alpha():
    a, b = torch.randn(7, 9), torch.randn(9)
    ops = [{"kind": "binary", "op": "sub", "args": [0, 1], "attrs": {"op": "sub", "alpha": 2.5}}]
    check(fused(ops, 2, [2], ["float32"]), [a, b], 1e-5)


def test_fp16_nhwc_squeeze_excite_bias_and_activation():
    """gelu(x * sigmoid(s) + bias) over a channels-last FP16 tensor: stays channels-last, matches the reference."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 7).half().contiguous(memory_format=torch.channels_last)
    s = torch.randn(2, 16, 1, 1).half()
    bias = torch.randn(16, 1, 1).half()
    ops = [
        {"kind": "unary", "op": "sigmoid", "args": [1], "attrs": {"op": "sigmoid"}},
        {"kind": "binary", "op": "mul", "args": [0, 3], "attrs": {"op": "mul"}},
        {"kind": "binary", "op": "add", "args": [4, 2], "attrs": {"op": "add"}},
        {"kind": "unary", "op": "gelu", "args": [5], "attrs": {"op": "gelu"}},
    ]
    (out,) = check(fused(ops, 3, [6], ["float16"]), [x, s, bias], 2e-3)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_strided_views_are_read_through_their_strides():
    torch.manual_seed(0)
    base = torch.randn(6, 10, 8)
    transposed = base.to(DEVICE).permute(2, 0, 1)  # [8, 6, 10], not contiguous
    sliced = torch.randn(8, 6, 20).to(DEVICE)[:, :, 3:13]  # a view with an offset and a row stride of 20
    ops = [
        {"kind": "binary", "op": "mul", "args": [0, 1], "attrs": {"op": "mul"}},
        {"kind": "unary", "op": "tanh", "args": [2], "attrs": {"op": "tanh"}},
    ]
    check(fused(ops, 2, [3], ["float32"]), [transposed, sliced], 1e-5)


def test_where_casts_and_booleans():
    torch.manual_seed(0)
    x = torch.randn(3, 50)
    mask = torch.rand(3, 50) > 0.5
    ops = [
        {"kind": "cast", "op": "cast", "args": [0], "attrs": {"dtype": "float16"}},
        {"kind": "binary", "op": "gt", "args": [0], "attrs": {"op": "gt", "scalar": 0.0}},
        {"kind": "binary", "op": "logical_and", "args": [3, 1], "attrs": {"op": "logical_and"}},
        {"kind": "where", "op": "where", "args": [4, 2, 0], "attrs": {}},
        {"kind": "cast", "op": "cast", "args": [5], "attrs": {"dtype": "float32"}},
    ]
    # The explicit FP16 cast rounds (the reference does too), so results agree to FP32 precision.
    check(fused(ops, 2, [6, 4], ["float32", "bool"]), [x, mask], 1e-6)


def test_zero_dim_constant_and_one_element_output():
    ops = [
        {"kind": "binary", "op": "mul", "args": [0, 1], "attrs": {"op": "mul"}},
        {"kind": "unary", "op": "exp", "args": [2], "attrs": {"op": "exp"}},
    ]
    check(fused(ops, 2, [3], ["float32"]), [torch.tensor(0.5), torch.tensor([[2.0]])], 1e-6)


def test_size_one_dims_with_any_stride_read_densely_and_correctly():
    torch.manual_seed(0)
    a = torch.randn(2, 5, 1).transpose(1, 2)  # [2, 1, 5], strides (5, 1, 1): dense but for the size-1 dim
    b = torch.randn(2, 3, 5)[:, 1:2, :]  # [2, 1, 5] at a row stride of 15: not dense
    ops = [{"kind": "binary", "op": "sub", "args": [0, 1], "attrs": {"op": "sub"}}]
    check(fused(ops, 2, [2], ["float32"]), [a, b], 1e-6)
