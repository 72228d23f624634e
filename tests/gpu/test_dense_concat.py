"""DenseNet-style blocks on CUDA: each dense layer's concat + BatchNorm + ReLU is one generated kernel that reads
the concat's pieces where they lie; the compiled module matches eager, from one thread and from two on two streams."""

import pytest
import torch

import kiln
from kiln.engine.kernels.codegen.program import Program, evaluate
from kiln.engine.kernels.fused_pointwise import run_generated
from kiln.engine.kernels.registry import RunContext
from tests.engine.optimize.test_fuse_concat_norm import DenseBlock
from tests.helpers import calls_on_streams, plan_steps, relative_error

CUDA = torch.device("cuda")
FP16_TOL = 2e-2


def _joined_steps(compiled):
    steps = plan_steps(compiled)
    return [s for s in steps if s.layer.kind == "fused_pointwise" and "concat:" in s.layer.attrs["fused_ops"]], steps


@pytest.mark.parametrize("head", [False, True], ids=["block", "with_head"])
def test_dense_block_compiles_fused_and_matches_eager(head):
    torch.manual_seed(0)
    model = DenseBlock(cin=32, growth=16, layers=4, head=head).to(CUDA).eval()
    x = torch.randn(8, 3, 28, 28, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    joined, steps = _joined_steps(compiled)
    assert len(joined) == 4 and not [s for s in steps if s.layer.kind in ("concat", "norm")], [s.layer.kind for s in steps]
    with torch.no_grad():
        assert relative_error(compiled(x), model(x)) < FP16_TOL
        xl = x.contiguous(memory_format=torch.channels_last)
        assert relative_error(compiled(xl), model(xl)) < FP16_TOL


def test_dense_block_from_two_threads_on_two_streams():
    torch.manual_seed(0)
    model = DenseBlock(cin=32, growth=16, layers=4).to(CUDA).eval()
    compiled = kiln.compile(model, [torch.randn(4, 3, 20, 20, device=CUDA)], enabled_precisions={torch.half}, min_block_size=1)
    inputs = [[torch.randn(4, 3, 20, 20, device=CUDA) for _ in range(10)] for _ in range(2)]
    with torch.no_grad():
        refs = [[model(x) for x in per_thread] for per_thread in inputs]
    torch.cuda.synchronize()

    results = calls_on_streams(compiled, inputs)
    assert max(relative_error(o, r) for outs, rs in zip(results, refs) for o, r in zip(outs, rs)) < FP16_TOL


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_generated_concat_norm_relu_against_reference_on_gpu(channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    channels = [64, 32, 32, 32, 32, 32]
    pieces = [torch.randn(16, c, 28, 28, device=CUDA).half().contiguous(memory_format=fmt) for c in channels]
    total, n = sum(channels), len(channels)
    scale, shift = torch.rand(total, 1, 1, device=CUDA) + 0.5, torch.randn(total, 1, 1, device=CUDA)
    ops = (
        {"kind": "concat", "op": "concat", "args": list(range(n)), "attrs": {"dim": 1}},
        {"kind": "binary", "op": "mul", "args": [n + 2, n], "attrs": {"op": "mul"}},
        {"kind": "binary", "op": "add", "args": [n + 3, n + 1], "attrs": {"op": "add"}},
        {"kind": "cast", "op": "cast", "args": [n + 4], "attrs": {"dtype": "float16"}},
        {"kind": "unary", "op": "relu", "args": [n + 5], "attrs": {"op": "relu"}},
    )
    program = Program(n + 2, ops, (n + 2 + len(ops) - 1,))
    (ref,) = evaluate(program, [*pieces, scale, shift], RunContext({}))
    (got,) = run_generated(program, [*pieces, scale, shift], [torch.half], [None])
    assert got.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)


class GhostModule(torch.nn.Module):
    """GhostNet's join: a 1x1 conv's channels and a depthwise conv of them, concatenated, then read by a conv
    (not a pointwise group), so the concat layer itself runs: on its generated tactic or torch.cat."""

    def __init__(self, cin=16, half=24):
        super().__init__()
        self.primary = torch.nn.Sequential(torch.nn.Conv2d(cin, half, 1, bias=False), torch.nn.BatchNorm2d(half), torch.nn.ReLU())
        cheap = torch.nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.cheap = torch.nn.Sequential(cheap, torch.nn.BatchNorm2d(half), torch.nn.ReLU())
        self.down = torch.nn.Conv2d(2 * half, 2 * half, 3, stride=2, padding=1, groups=2 * half)

    def forward(self, x):
        a = self.primary(x)
        return self.down(torch.cat([a, self.cheap(a)], 1))


def test_ghost_join_is_timed_on_its_generated_tactic_and_matches_eager():
    torch.manual_seed(0)
    model = GhostModule().to(CUDA).eval()
    x = torch.randn(8, 16, 40, 40, device=CUDA).contiguous(memory_format=torch.channels_last)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    (step,) = plan_steps(compiled, "concat")
    assert "triton_generated" in step.timings, step.timings
    with torch.no_grad():
        assert relative_error(compiled(x), model(x)) < FP16_TOL
