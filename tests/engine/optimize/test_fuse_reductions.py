"""Reduction fusion in a whole plan: the generated tactics, swapped in for the references the CPU build chose,
write into the planned (channels-last) arena buffers and give the reference plan's outputs (Triton's interpreter)."""

import pytest
import torch

from kiln.engine.builder.build import build_plan
from kiln.engine.ir.network import Network
from kiln.engine.ir.tensor import Layout
from kiln.engine.kernels.triton_group_norm import triton
from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
from kiln.engine.optimize.fuse_reductions import fuse_reduction_layers
from kiln.engine.optimize.layout import mark_channels_last
from kiln.engine.plan import Step
from kiln.engine.runtime import PlanExecutor
from kiln.settings import CompileSettings
from tests.helpers import optimized_for_cuda, relative_error

# CPU plans with the Triton tactics swapped in run only in Triton's interpreter; on a GPU, tests/gpu/test_generated.py
# compiles the same blocks for CUDA.
pytestmark = pytest.mark.skipif(triton is None or torch.cuda.is_available(), reason="needs Triton's interpreter (no GPU)")
GENERATED = {"norm": "triton_group_norm", "softmax": "triton_softmax_rows", "pool": "triton_reduce", "reduce": "triton_reduce"}


def poolformer_stage():
    """Two PoolFormer-like steps on an NHWC input: residual add -> GroupNorm(1) -> pool - x -> layer scale ->
    residual -> GroupNorm(2) -> GELU; then the head's residual add -> global average pool."""
    shape = [2, 8, 6, 5]
    f16 = torch.float16
    net = Network()
    x = net.add_input("x", shape, f16)
    r = net.add_input("r", shape, f16)
    ls = net.add_constant("ls", (torch.rand(8, 1, 1) + 0.5).half())
    w = net.add_constant("w", (torch.rand(8) + 0.5).half())
    b = net.add_constant("b", torch.randn(8).half())
    net.tensors[x.name].layout = net.tensors[r.name].layout = Layout.CHANNELS_LAST
    (stream,) = net.add_layer("binary", [x, r], [(shape, f16)], {"op": "add"})
    (normed,) = net.add_layer("norm", [stream, w, b, None, None], [(shape, f16)], {"type": "group", "groups": 1, "eps": 1e-5})
    pool_attrs = {"op": "avg", "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "ceil_mode": False}
    (pooled,) = net.add_layer("pool", [normed], [(shape, f16)], {**pool_attrs, "count_include_pad": False, "divisor_override": None})
    (mixed,) = net.add_layer("binary", [pooled, normed], [(shape, f16)], {"op": "sub"})
    (scaled,) = net.add_layer("binary", [mixed, ls], [(shape, f16)], {"op": "mul"})
    (stream2,) = net.add_layer("binary", [stream, scaled], [(shape, f16)], {"op": "add"})
    (normed2,) = net.add_layer("norm", [stream2, w, b, None, None], [(shape, f16)], {"type": "group", "groups": 2, "eps": 1e-5})
    (act,) = net.add_layer("unary", [normed2], [(shape, f16)], {"op": "gelu"})
    (head_in,) = net.add_layer("binary", [stream2, act], [(shape, f16)], {"op": "add"})
    (pooled2,) = net.add_layer("pool", [head_in], [([2, 8, 1, 1], f16)], {"op": "adaptive_avg", "output_size": [1, 1]})
    net.outputs.append(pooled2.name)
    return net


@pytest.mark.parametrize("one_kernel", [True, False], ids=["generated", "unfused"])
def test_poolformer_stage_fuses_and_the_generated_plan_matches_the_reference_plan(one_kernel):
    torch.manual_seed(0)
    net = fuse_reduction_layers(fuse_pointwise_groups(poolformer_stage()))
    mark_channels_last(net)
    kinds = [m.kind for m in net.layers]
    # Each norm took the residual add before it (handed out: the stream is read again), the second its GELU;
    # the head's add went into the pool. Only the 3x3 pool is left on its own.
    assert kinds == ["fused_reduction", "pool", "fused_reduction", "fused_reduction"], kinds
    assert [len(m.outputs) for m in net.layers] == [2, 1, 2, 1]
    assert all(net.tensors[o].layout == Layout.CHANNELS_LAST for m in net.layers[:3] for o in m.outputs)

    plan = build_plan(net, CompileSettings())
    inputs = [(torch.randn(2, 8, 6, 5) * 2 + 1).half().contiguous(memory_format=torch.channels_last) for _ in range(2)]
    arena = torch.zeros(plan.arena.size, dtype=torch.uint8)
    (expected,) = PlanExecutor(plan).run(inputs, arena)
    # "triton_unfused" runs the parts one after another: generated pointwise kernels around the reduction's own tactic.
    chosen = GENERATED if one_kernel else dict.fromkeys(GENERATED, "triton_unfused")
    plan.steps = [Step(s.layer, chosen[s.layer.attrs["reduction"]["kind"]]) if s.layer.kind == "fused_reduction" else s for s in plan.steps]
    (got,) = PlanExecutor(plan).run(inputs, torch.zeros(plan.arena.size, dtype=torch.uint8))
    assert relative_error(got.float(), expected.float()) < 4e-3


def test_a_reader_before_the_reduction_keeps_the_prologue_out():
    net = poolformer_stage()
    stream = net.layers[0].outputs[0]
    (probe,) = net.add_layer("unary", [net.tensors[stream]], [(net.tensors[stream].shape, torch.float16)], {"op": "neg"})
    net.layers.insert(1, net.layers.pop())  # read between the add and the norm, which the fused layer would replace
    net.outputs.append(probe.name)
    kinds = [m.kind for m in fuse_reduction_layers(net).layers]
    # The first norm has two readers (no epilogue) and its input is read before it (no prologue): left alone.
    assert kinds[:3] == ["binary", "unary", "norm"], kinds


@pytest.mark.parametrize("case", ["poolformer", "shifted_windows"])
def test_real_blocks_fuse_and_their_generated_plans_match(case):
    """PoolFormer's block and Swin's shifted-window attention, through capture, conversion and the CUDA optimize passes;
    the plan with every fused layer on its one-kernel tactic, and on triton_unfused, against the reference plan."""
    from kiln.engine.kernels.registry import BuildTarget, tactics_for
    from tests.gpu.test_generated import PoolFormerBlock, WindowAttention

    torch.manual_seed(0)
    if case == "poolformer":
        model, inputs = PoolFormerBlock(16, 1).eval(), [torch.randn(2, 16, 6, 6)]
    else:
        model, inputs = WindowAttention(tokens=9, dim=8, shifted_windows=2).eval(), [torch.randn(4, 3, 9, 8) for _ in range(3)]
    # Whole window attention becomes one attention layer (optimize/fuse_attention.py); here its softmax with the
    # bias and mask across reshapes is the fused reduction under test, as where the attention pattern does not match.
    network, plan = optimized_for_cuda(model, inputs, without=("fuse_attention",))
    fused = [m for m in network.layers if m.kind == "fused_reduction"]
    assert len(fused) == (4 if case == "poolformer" else 1)
    values = [x.half().contiguous(memory_format=torch.channels_last) if x.dim() == 4 and case == "poolformer" else x.half() for x in inputs]
    (expected,) = PlanExecutor(plan).run(values, torch.zeros(plan.arena.size, dtype=torch.uint8))
    cuda = BuildTarget(torch.device("cuda"), torch.float16)
    for one_kernel in (True, False):
        steps = []
        for step in plan.steps:
            if step.layer.kind == "fused_reduction":
                names = [t.name for t in tactics_for(step.layer, cuda) if t.name not in ("reference", "triton_unfused")]
                step = Step(step.layer, names[0] if one_kernel else "triton_unfused")
            steps.append(step)
        plan.steps = steps
        (got,) = PlanExecutor(plan).run(values, torch.zeros(plan.arena.size, dtype=torch.uint8))
        assert relative_error(got.float(), expected.float()) < 4e-3
