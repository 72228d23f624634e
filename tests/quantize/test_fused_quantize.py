"""`quantize` as an op of the generated kernels: the reduction or pointwise group that makes a value writes its
8-bit copy too, and the standalone quantize layer is gone. Kernels against the reference in Triton's interpreter
(small shapes), the passes on networks as a CUDA build makes them."""

import copy
import dataclasses

import pytest
import torch

import kiln
from kiln.engine.builder.build import build_plan
from kiln.engine.ir.network import Network
from kiln.engine.kernels import triton_group_norm, triton_norm, triton_reduce, triton_softmax
from kiln.engine.kernels.codegen.program import Program, evaluate
from kiln.engine.kernels.fused_pointwise import run_generated, triton
from kiln.engine.kernels.fused_reduction import fused_reduction_reference, fused_reduction_unfused
from kiln.engine.kernels.registry import RunContext, get_tactic
from kiln.engine.optimize import OPTIMIZE_PASSES, OptimizeContext
from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
from kiln.engine.optimize.fuse_reductions import fuse_reduction_layers
from kiln.engine.runtime.executor import PlanExecutor
from tests.engine.optimize.test_fuse_pointwise import run
from tests.helpers import network_as_cuda_build, relative_error

pytestmark = pytest.mark.skipif(triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})
STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
# Triton's interpreter casts FP32 to e4m3 wrongly where rounding carries into the exponent (124.4 gives 64, not 128);
# the GPU's cvt does it right, so the e4m3 kernels are checked on the GPU (same tests, DEVICE cuda).
ON_GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton's interpreter rounds e4m3 wrongly")
QDTYPES = ["int8", pytest.param("fp8", marks=ON_GPU_ONLY)]


def quantize_attrs(qdtype: str, scale: float = 0.03, zero_point: int = 0) -> dict:
    return {"scale": scale, "zero_point": zero_point, "qmin": -128, "qmax": 127, "qdtype": qdtype, "dtype": str(STORAGE[qdtype])[6:]}


def assert_close_8_bit(out: torch.Tensor, ref: torch.Tensor, fp16_between: float = 0.0) -> None:
    """The same 8-bit values, except where FP32 arithmetic in another order moves a value across a rounding edge:
    then one step apart (one integer, or one e4m3 step), on a small fraction of the elements.

    `fp16_between`: the path rounds the value to FP16 before quantizing it (a reduction kernel, then a separate
    quantize), so the quantized value may also differ by that rounding, this many quantized units. Near zero an
    e4m3 step is 2^-9 units: an FP16 rounding of the O(1) terms of a normalisation's affine is several steps."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    o, r = out.float(), ref.float()
    if ref.dtype == torch.int8:
        step = torch.ones_like(r)
    else:  # one e4m3 step at the larger magnitude: 2^(exponent - 3), 2^-9 below the normal range
        big = torch.maximum(o.abs(), r.abs()).clamp_min(2.0**-6)
        step = torch.exp2(torch.floor(torch.log2(big)) - 3)
    assert bool(((o - r).abs() <= torch.clamp(step, min=fp16_between)).all()), (o - r).abs().max()
    assert (o != r).float().mean().item() < 0.02


@pytest.mark.parametrize("qdtype", QDTYPES)
def test_quantize_op_in_a_generated_pointwise_kernel_equals_the_reference(qdtype):
    # relu(a + b) then quantized: the whole group in one kernel, the 8-bit value and the float one both written.
    ops = (
        {"kind": "binary", "op": "add", "args": [0, 1], "attrs": {"op": "add"}},
        {"kind": "unary", "op": "relu", "args": [2], "attrs": {"op": "relu"}},
        {"kind": "quantize", "op": "quantize", "args": [3], "attrs": quantize_attrs(qdtype, 0.5, 3 if qdtype == "int8" else 0)},
    )
    program = Program(2, ops, (4, 3))
    torch.manual_seed(0)
    a, b = torch.randn(6, 40) * 40, torch.randn(40)
    a[0, :6] = torch.tensor([0.25, 0.75, 1.25, 2.25, 300.0, 1e4]) - b[:6]  # halves round to even; past the range clamps
    a, b = a.to(DEVICE), b.to(DEVICE)
    ref_q, ref_y = evaluate(program, [a, b], RUN)
    out_q, out_y = run_generated(program, [a, b], [STORAGE[qdtype], torch.float32], [None, None])
    assert out_q.dtype == STORAGE[qdtype] and torch.equal(out_q.float(), ref_q.float())
    torch.testing.assert_close(out_y, ref_y, rtol=0, atol=0)


@pytest.mark.parametrize("qdtype", QDTYPES)
def test_generated_quantize_tactic_reads_a_permuted_input_where_it_lies(qdtype):
    # The attention output behind a permute, as an INT8 BERT layer's O projection reads it.
    from kiln.engine.ir.network import Layer

    torch.manual_seed(1)
    x = (torch.randn(2, 3, 5, 8) * 4).half().to(DEVICE).permute(0, 2, 1, 3)
    layer = Layer("quantize", "q", ["x"], ["y"], quantize_attrs(qdtype, 0.05))
    ref = get_tactic("quantize", "reference").fn(layer, [x], RUN)
    out = get_tactic("quantize", "triton_generated").fn(layer, [x], RUN)
    assert out.shape == ref.shape and torch.equal(out.float(), ref.float())


# A reduction whose result feeds a quantize (the next 8-bit layer) and a float reader (a residual add).
REDUCTIONS = {
    "layer_norm": ("norm", {"type": "layer", "shape": [32], "eps": 1e-5}, [3, 5, 32], [3, 5, 32], True, triton_norm.fused_norm_rows_triton),
    "group_norm": (
        "norm", {"type": "group", "groups": 2, "eps": 1e-5}, [2, 8, 5, 6], [2, 8, 5, 6], True, triton_group_norm.fused_group_norm_triton
    ),
    "softmax": ("softmax", {"op": "softmax", "dim": -1, "dtype": None}, [3, 4, 24], [3, 4, 24], False, triton_softmax.fused_softmax_triton),
    "mean": ("reduce", {"op": "mean", "dims": [-1], "keepdim": True}, [3, 4, 50], [3, 4, 1], False, triton_reduce.fused_reduce_triton),
}  # fmt: skip


def reduction_then_quantize(kind, attrs, shape, out_shape, affine, qdtype, hand_out_stream):
    net = Network()
    x = net.add_input("x", shape, torch.float16)
    r = net.add_input("r", shape, torch.float16)
    (stream,) = net.add_layer("binary", [x, r], [(shape, torch.float16)], {"op": "add"})
    inputs = [stream]
    if affine:
        channels = shape[-1] if attrs.get("type") == "layer" else shape[1]
        w = net.add_constant("w", (torch.rand(channels) + 0.5).half())
        b = net.add_constant("b", torch.randn(channels).half())
        inputs += [w, b, None, None]
    (reduced,) = net.add_layer(kind, inputs, [(out_shape, torch.float16)], attrs)
    (q,) = net.add_layer("quantize", [reduced], [(out_shape, STORAGE[qdtype])], quantize_attrs(qdtype, 0.02))
    (later,) = net.add_layer("unary", [reduced], [(out_shape, torch.float16)], {"op": "neg"})
    net.outputs += [q.name, later.name]
    if hand_out_stream:
        (again,) = net.add_layer("unary", [stream], [(shape, torch.float16)], {"op": "abs"})
        net.outputs.append(again.name)
    return net


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("case", list(REDUCTIONS))
def test_reduction_writes_its_result_and_the_quantized_copy(case, qdtype):
    kind, attrs, shape, out_shape, affine, tactic_fn = REDUCTIONS[case]
    hand_out = case == "layer_norm"  # the residual stream of the prologue written too: results, then handed-out values
    net = reduction_then_quantize(kind, attrs, shape, out_shape, affine, qdtype, hand_out)
    torch.manual_seed(len(case))
    values = {n: (torch.randn(shape) * 2 + 1).half() for n in ("x", "r")}
    values.update(net.constants)
    expected = run(net, values)
    fused = fuse_reduction_layers(fuse_pointwise_groups(net))
    layer = fused.layers[0]
    assert layer.kind == "fused_reduction" and "quantize" not in [m.kind for m in fused.layers]
    reduced = net.tensors[layer.outputs[1]]
    assert [fused.tensors[o].dtype for o in layer.outputs[:2]] == [STORAGE[qdtype], torch.float16] and reduced.shape == out_shape
    assert len(layer.outputs) == (3 if hand_out else 2)
    got = run(fused, values)
    for name in expected:  # the fused reference computes what the separate layers did
        torch.testing.assert_close(got[name].float(), expected[name].float(), rtol=0, atol=0)
    on_device = [values[n].to(DEVICE) if n is not None else None for n in layer.inputs]
    ref = fused_reduction_reference(layer, [v.float() if v is not None else None for v in on_device], RUN)
    for fn, fp16_between in ((tactic_fn, 0.0), (fused_reduction_unfused, 2e-3 / 0.02)):
        outs = fn(layer, on_device, RUN)
        assert_close_8_bit(outs[0], ref[0], fp16_between)
        for o, e in zip(outs[1:], ref[1:]):
            assert o.dtype == e.dtype and relative_error(o.float(), e.float()) < 4e-3


def test_a_float_reader_beside_other_readers_is_not_taken_as_an_epilogue():
    # Without a quantize, a second output would write as much as the fused reader saves: left as it was.
    net = Network()
    x = net.add_input("x", [3, 32], torch.float16)
    w = net.add_constant("w", torch.rand(32).half())
    b = net.add_constant("b", torch.rand(32).half())
    (normed,) = net.add_layer("norm", [x, w, b, None, None], [([3, 32], torch.float16)], {"type": "layer", "shape": [32], "eps": 1e-5})
    (act,) = net.add_layer("unary", [normed], [([3, 32], torch.float16)], {"op": "gelu"})
    (neg,) = net.add_layer("unary", [normed], [([3, 32], torch.float16)], {"op": "neg"})
    net.outputs += [act.name, neg.name]
    assert [m.kind for m in fuse_reduction_layers(fuse_pointwise_groups(net)).layers] == ["norm", "unary", "unary"]


def small_bert():
    from benchmarks.models import TINY_ENCODER, Encoder

    torch.manual_seed(0)
    model = Encoder(TINY_ENCODER).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, TINY_ENCODER.vocab, (2, 16), generator=g), torch.ones(2, 16, dtype=torch.long)) for _ in range(2)]
    calibrator = kiln.ptq.DataLoaderCalibrator(batches, algo="minmax", progress=False)
    return model, batches, calibrator


def test_bert_layer_norms_write_the_8_bit_input_of_the_next_linear():
    """The benchmark's BERT encoder (2 small layers) as a CUDA build makes it: each LayerNorm that feeds an 8-bit
    linear writes its input; the quantize layers left are those of the attention outputs (one per layer). INT8 only
    here: an FP8 CUDA build's settings ask the GPU for FP8 (tests/gpu/test_quantized.py builds both)."""
    qdtype = torch.int8
    model, batches, calibrator = small_bert()
    before_fusion = ("bind_symbols", "place_quantization", "assign_precision")
    precisions = {qdtype, torch.half}
    unfused, settings = network_as_cuda_build(model, list(batches[0]), precisions=precisions, calibrator=calibrator, only=before_fusion)
    network = copy.deepcopy(unfused)  # calibrated once: the rest of the CUDA passes on a copy
    cuda = OptimizeContext(dataclasses.replace(settings, device=torch.device("cuda")), None, None)
    for network_pass in OPTIMIZE_PASSES:
        if network_pass.__name__ not in before_fusion:
            network = network_pass(network, cuda)
    before = [m.kind for m in unfused.layers].count("quantize")
    after = [m.kind for m in network.layers].count("quantize")
    assert (before, after) == (6, 2)
    norms = [m for m in network.layers if m.kind == "fused_reduction" and "quantize:int8" in m.attrs["fused_ops"]]
    assert len(norms) == 4 and all(network.tensors[m.outputs[0]].dtype == torch.int8 for m in norms)
    for m in norms:  # each feeds an 8-bit linear directly
        assert any(r.kind == "qlinear" and r.inputs[0] == m.outputs[0] for r in network.layers)
    # Planned and run (reference tactics on the CPU), the fused network answers exactly as the unfused one.
    outs = []
    for net in (unfused, network):
        plan = build_plan(net, settings)
        by_name = dict(zip(("input_ids", "attention_mask"), batches[1]))
        outs.append(PlanExecutor(plan).run([by_name[n] for n in plan.inputs], torch.zeros(plan.arena.size, dtype=torch.uint8)))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
