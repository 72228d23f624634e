"""Generated kernels on the GPU: pointwise groups in real models, compiled, against eager, with threads."""

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

import kiln
from tests.helpers import relative_error

CUDA = torch.device("cuda")


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: 7x7 depthwise, LayerNorm over channels (NHWC), GELU MLP, layer scale, residual."""

    def __init__(self, dim=64):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class SwishGate(nn.Module):
    """Element-wise heavy: hard-swish, a sigmoid gate from a pooled vector, clamp, and a residual mix."""

    def __init__(self, dim=32):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.gate = nn.Linear(dim, dim)

    def forward(self, x):
        y = F.hardswish(self.conv(x))
        g = torch.sigmoid(self.gate(y.mean((2, 3))))[:, :, None, None]
        return torch.clamp(y * g + 0.5 * x, -3.0, 3.0) - torch.tanh(x) * 0.1


def _fused_layers(compiled):
    return [s for e in compiled.engine_blocks.values() for s in e.plan.steps if s.layer.kind == "fused_pointwise"]


def _check(model, x, tol=2e-2):
    model = model.to(CUDA).eval()
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    fused = _fused_layers(compiled)
    assert fused, "no pointwise group was fused"
    with torch.no_grad():
        ref = model(x)
        assert relative_error(compiled(x), ref) < tol
        inputs = [torch.randn_like(x) for _ in range(24)]
        refs = [model(i) for i in inputs]

        def call(i):
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                out = compiled(inputs[i])
            s.synchronize()
            return relative_error(out, refs[i])

        with ThreadPoolExecutor(6) as pool:
            assert max(pool.map(call, range(len(inputs)))) < tol
    return compiled, fused


def test_convnext_block_fuses_and_matches_eager():
    torch.manual_seed(0)
    _check(ConvNeXtBlock(), torch.randn(4, 64, 14, 14, device=CUDA))


def test_elementwise_heavy_block_fuses_and_matches_eager():
    torch.manual_seed(0)
    compiled, fused = _check(SwishGate(), torch.randn(2, 32, 16, 16, device=CUDA))
    assert max(len(s.layer.attrs["program"]["ops"]) for s in fused) >= 4


def test_generated_tactic_against_reference_on_gpu():
    from kiln.engine.kernels.codegen.program import Program, evaluate
    from kiln.engine.kernels.fused_pointwise import run_generated
    from kiln.engine.kernels.registry import RunContext

    torch.manual_seed(0)
    x = torch.randn(8, 96, 28, 28, device=CUDA).half().contiguous(memory_format=torch.channels_last)
    s = torch.randn(8, 96, 1, 1, device=CUDA).half()
    ops = (
        {"kind": "unary", "op": "sigmoid", "args": [1], "attrs": {"op": "sigmoid"}},
        {"kind": "binary", "op": "mul", "args": [0, 2], "attrs": {"op": "mul"}},
        {"kind": "unary", "op": "gelu_tanh", "args": [3], "attrs": {"op": "gelu_tanh"}},
    )
    program = Program(2, ops, (4,))
    (got,) = run_generated(program, [x, s], [torch.float16], [None])
    (ref,) = evaluate(program, [x, s], RunContext({}))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(got, ref) < 5e-3
