"""The Triton NHWC pooling kernel against the pool reference (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_pool
from kiln.engine.kernels.pool import pool_reference
from kiln.engine.kernels.registry import RunContext

pytestmark = pytest.mark.skipif(triton_pool.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})


def _max(kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    return {"op": "max", "kernel": list(kernel), "stride": list(stride), "padding": list(padding), "dilation": list(dilation),
            "ceil_mode": ceil_mode}  # fmt: skip


def _avg(kernel, stride, padding, ceil_mode=False, count_include_pad=True, divisor_override=None):
    return {"op": "avg", "kernel": list(kernel), "stride": list(stride), "padding": list(padding), "ceil_mode": ceil_mode,
            "count_include_pad": count_include_pad, "divisor_override": divisor_override}  # fmt: skip


CASES = {
    "resnet_stem_max_3x3_s2": ((2, 24, 11, 11), _max((3, 3), (2, 2), (1, 1))),
    "max_dilated_ceil": ((1, 40, 9, 10), _max((3, 2), (2, 2), (1, 0), (2, 1), ceil_mode=True)),
    "max_2x2_odd_channels": ((2, 70, 7, 6), _max((2, 2), (2, 2), (0, 0))),
    "poolformer_avg_3x3_s1_exclude_pad": ((2, 33, 7, 7), _avg((3, 3), (1, 1), (1, 1), count_include_pad=False)),
    "avg_include_pad_ceil": ((1, 16, 8, 9), _avg((3, 3), (2, 2), (1, 1), ceil_mode=True)),
    "avg_divisor_override": ((2, 8, 6, 6), _avg((2, 3), (2, 1), (1, 1), divisor_override=5)),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_reference(case, dtype):
    shape, attrs = CASES[case]
    torch.manual_seed(len(case))
    x = torch.randn(shape, device=DEVICE).to(dtype).contiguous(memory_format=torch.channels_last)
    layer = Layer("pool", "p", ["x"], ["y"], attrs)
    ref = pool_reference(layer, [x.float()], RUN)
    out = triton_pool.pool_triton(layer, [x], RUN)
    assert out.shape == ref.shape and out.dtype == dtype
    assert out.permute(0, 2, 3, 1).is_contiguous()  # NHWC, like its input
    torch.testing.assert_close(out.float(), ref, atol=2e-3 if dtype == torch.float16 else 1e-5, rtol=1e-3)


def test_nchw_memory_gives_the_same_answer():
    # Seen on the H100: poolformer's group norm handed NCHW memory to a pool planned as NHWC.
    layer = Layer("pool", "p", ["x"], ["y"], _avg((3, 3), (1, 1), (1, 1), count_include_pad=False))
    x = torch.randn(1, 8, 6, 6, device=DEVICE)
    torch.testing.assert_close(triton_pool.pool_triton(layer, [x], RUN), pool_reference(layer, [x], RUN), atol=1e-5, rtol=1e-5)


def test_declines_what_it_was_not_written_for():
    layer = Layer("pool", "p", ["x"], ["y"], _max((3, 3), (2, 2), (1, 1)))
    with pytest.raises(ValueError, match="floating"):
        triton_pool.pool_triton(layer, [torch.ones(1, 8, 6, 6, dtype=torch.int32, device=DEVICE)], RUN)


def test_in_a_whole_channels_last_plan_it_gives_the_reference_plans_answer():
    """A ResNet stem (conv, relu, 3x3/2 max pool) and a PoolFormer token mixer (avg pool - x), built on the CPU with
    channels-last arena buffers, then run again with the Triton pools swapped in."""
    from kiln.engine.builder.build import build_plan
    from kiln.engine.ir.network import Network
    from kiln.engine.optimize.layout import mark_channels_last
    from kiln.engine.plan import Step
    from kiln.engine.runtime import PlanExecutor
    from kiln.settings import CompileSettings

    torch.manual_seed(0)
    f16 = torch.float16
    net = Network()
    x = net.add_input("x", [2, 3, 16, 16], f16)
    w = net.add_constant("w", (torch.randn(16, 3, 3, 3) * 0.3).half())
    conv = {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}
    (y,) = net.add_layer("conv", [x, w, None], [([2, 16, 8, 8], f16)], conv)
    (y,) = net.add_layer("unary", [y], [([2, 16, 8, 8], f16)], {"op": "relu"})
    (y,) = net.add_layer("pool", [y], [([2, 16, 4, 4], f16)], _max((3, 3), (2, 2), (1, 1)))
    (p,) = net.add_layer("pool", [y], [([2, 16, 4, 4], f16)], _avg((3, 3), (1, 1), (1, 1), count_include_pad=False))
    (z,) = net.add_layer("binary", [p, y], [([2, 16, 4, 4], f16)], {"op": "sub"})
    net.outputs.append(z.name)
    mark_channels_last(net)
    plan = build_plan(net, CompileSettings())
    inputs = [torch.randn(2, 3, 16, 16).half().contiguous(memory_format=torch.channels_last)]
    (expected,) = PlanExecutor(plan).run(inputs, torch.zeros(plan.arena.size, dtype=torch.uint8))
    plan.steps = [Step(s.layer, "triton_pool_nhwc") if s.layer.kind == "pool" else s for s in plan.steps]
    assert sum(s.tactic == "triton_pool_nhwc" for s in plan.steps) == 2
    (got,) = PlanExecutor(plan).run(inputs, torch.zeros(plan.arena.size, dtype=torch.uint8))
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-3, rtol=1e-3)


def compile_both_kinds() -> None:
    """Both kinds (max, average) through ptxas for an H100: the interpreter accepts programs the compiler refuses."""
    from tests.helpers import compile_for_sm90

    for is_max in (True, False):
        constants = {"KH": 3, "KW": 3, "IS_MAX": is_max, "INCLUDE_PAD": False, "HAS_DIVISOR": False, "BLOCK_P": 32, "BLOCK_C": 64}
        compile_for_sm90(
            triton_pool._pool_nhwc, constants, lambda name: "*fp16" if name.endswith("_ptr") else "fp32" if name == "divisor" else "i32"
        )


def test_compiles_for_sm90(tmp_path):
    from tests.helpers import run_outside_the_interpreter

    pytest.importorskip("triton.compiler")
    run_outside_the_interpreter(__name__, tmp_path)


if __name__ == "__main__":
    compile_both_kinds()
