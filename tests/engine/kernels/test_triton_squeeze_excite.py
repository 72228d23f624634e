"""The squeeze-excite gate kernel (every config) and the unfused GEMM tactic against the reference, which runs the
member layers' references (Triton's interpreter on a CPU): NCHW and channels-last inputs, H and W that are not one
flat axis, with and without biases, conv and linear stages, activation chains from the op vocabulary."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_squeeze_excite
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.registry import BuildTarget, RunContext, tactics_for
from kiln.engine.kernels.squeeze_excite import compose, squeeze_excite_reference, squeeze_excite_unfused, stage_program
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_squeeze_excite.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})
CONV = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}
MEAN = {"kind": "reduce", "attrs": {"op": "mean", "dims": [2, 3], "keepdim": True}}
POOL = {"kind": "pool", "attrs": {"op": "adaptive_avg", "output_size": [1, 1]}}
# Hard-sigmoid written out as MobileNet v1-era code does: x * (1/6) + 0.5, clamped to [0, 1].
HARD_GATE = Program(
    1,
    (
        {"kind": "binary", "op": "mul", "args": [0], "attrs": {"op": "mul", "scalar": 1 / 6}},
        {"kind": "binary", "op": "add", "args": [1], "attrs": {"op": "add", "scalar": 0.5}},
        {"kind": "unary", "op": "clamp", "args": [2], "attrs": {"op": "clamp", "min": 0.0, "max": 1.0}},
    ),
    (3,),
)


def conv_stage(activation, after=None):
    kind = "conv_epilogue" if activation else "conv"
    attrs = {**CONV, "activation": activation, "residual": False} if activation else dict(CONV)
    return {"kind": kind, "attrs": attrs, "after": after.to_json() if after else None}


def linear_stage(activation):
    epilogue = Program(1, ({"kind": "unary", "op": activation, "args": [0], "attrs": {"op": activation}},), (1,))
    return {"kind": "linear", "attrs": {"epilogue": epilogue.to_json()}, "after": None}


def gate(mean, stages, c, hidden, shape, layout="nhwc", bias=(True, True)):
    torch.manual_seed(c + hidden)
    attrs = {"mean": mean, "stages": stages, "out_dtype": "float16"}
    layer = Layer("squeeze_excite", "se", ["x", "w1", "b1", "w2", "b2"], ["g"], attrs, "float16")
    n, h, w = shape
    if layout == "sliced":  # H and W are not one flat axis: a window of a wider NCHW tensor
        x = torch.randn(n, c, h, w + 3)[:, :, :, 2 : 2 + w]
    else:
        x = torch.randn(n, c, h, w)
        x = x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x
    conv = stages[0]["kind"] != "linear"
    w1 = torch.randn(hidden, c, *([1, 1] if conv else [])) * c**-0.5
    w2 = torch.randn(c, hidden, *([1, 1] if conv else [])) * hidden**-0.5
    b1 = torch.randn(hidden) if bias[0] else None
    b2 = torch.randn(c) if bias[1] else None
    inputs = [t.half().to(DEVICE) if t is not None else None for t in (x, w1, b1, w2, b2)]
    return layer, inputs


CASES = {
    "efficientnet_nhwc": (MEAN, [conv_stage("silu"), conv_stage("sigmoid")], 40, 10, (2, 5, 7), "nhwc", (True, True)),
    "mobilenet_pool_nchw": (POOL, [conv_stage("relu"), conv_stage("hardsigmoid")], 72, 24, (1, 6, 6), "nchw", (True, True)),
    "channel_blocks_sliced": (MEAN, [conv_stage("relu"), conv_stage(None, after=HARD_GATE)], 150, 20, (2, 3, 4), "sliced", (False, True)),
    "wide_hidden_no_bias": (MEAN, [conv_stage("gelu"), conv_stage("sigmoid")], 150, 600, (1, 2, 3), "nhwc", (False, False)),
    "linear_stages": (
        {"kind": "reduce", "attrs": {"op": "mean", "dims": [-1, -2], "keepdim": False}},
        [linear_stage("relu"), linear_stage("sigmoid")], 48, 12, (3, 4, 4), "nhwc", (True, False),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_gate_matches_the_reference(case):
    mean, stages, c, hidden, shape, layout, bias = CASES[case]
    layer, inputs = gate(mean, stages, c, hidden, shape, layout, bias)
    ref = squeeze_excite_reference(layer, [t.float() if t is not None else None for t in inputs], RUN)
    expected_shape = (shape[0], c) if stages[-1]["kind"] == "linear" else (shape[0], c, 1, 1)
    assert tuple(ref.shape) == expected_shape
    tactics = [(name, t.fn) for name, t in ((t.name, t) for t in tactics_for(layer, BuildTarget(torch.device("cuda"), torch.float16)))]
    names = [name for name, _ in tactics]
    assert set(triton_squeeze_excite.CONFIGS) | {"reference", "triton_unfused"} <= set(names)
    for name, fn in tactics:
        if name == "reference":
            continue
        out = fn(layer, inputs, RUN)
        assert out.shape == ref.shape and out.dtype == torch.float16, name
        assert relative_error(out.float(), ref.float()) < 4e-3, name


def test_the_unfused_tactic_writes_the_planned_buffer_shape():
    layer, inputs = gate(MEAN, [conv_stage("silu"), conv_stage("sigmoid")], 24, 6, (2, 3, 3))
    out = squeeze_excite_unfused(layer, inputs, RUN)
    assert tuple(out.shape) == (2, 24, 1, 1)


def test_a_stage_program_is_its_activation_then_what_followed():
    program = stage_program(conv_stage("relu", after=HARD_GATE))
    assert [op["op"] for op in program.ops] == ["relu", "mul", "add", "clamp"]
    assert program.ops[1]["args"] == [1] and program.outputs == (4,)
    assert compose(Program(1, (), (0,)), HARD_GATE) == HARD_GATE
    with pytest.raises(ValueError, match="one-input"):
        compose(HARD_GATE, Program(2, (), (0,)))


def test_too_wide_a_hidden_vector_is_refused():
    layer, inputs = gate(MEAN, [conv_stage("relu"), conv_stage("sigmoid")], 8, triton_squeeze_excite.MAX_HIDDEN + 1, (1, 2, 2))
    with pytest.raises(ValueError, match="do not make a gate"):
        triton_squeeze_excite.squeeze_excite(*inputs, (Program(1, (), (0,)),) * 2, torch.float16, (1, 8, 1, 1), (4096, 64, 4, 1))
