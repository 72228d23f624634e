"""Generated kernels on the GPU: pointwise groups in real models, compiled, against eager, with threads."""

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

import kiln
from tests.gpu.models import ConvNeXtBlock
from tests.helpers import plan_steps, relative_error

CUDA = torch.device("cuda")


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
    return plan_steps(compiled, "fused_pointwise")


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


class PoolFormerBlock(nn.Module):
    """PoolFormer's block: GroupNorm(1) over the whole sample, pool - x token mixer, layer scales, residuals."""

    def __init__(self, dim=64, groups=1):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, dim), nn.GroupNorm(groups, dim)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.fc1, self.fc2 = nn.Conv2d(dim, 4 * dim, 1), nn.Conv2d(4 * dim, dim, 1)
        self.ls1 = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)
        self.ls2 = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.ls1 * (self.pool(y) - y)
        x = x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.norm1(x + 1.0).mean((2, 3))


class WindowAttention(nn.Module):
    """Swin's attention inside windows: scaled scores plus a relative-position bias, softmax, then values."""

    def __init__(self, heads=3, tokens=49, dim=32, shifted_windows=0):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(heads, tokens, tokens))
        self.heads, self.scale = heads, dim**-0.5
        # Shifted windows: an attention mask per window, added with the windows split out of the batch.
        mask = torch.where(torch.rand(shifted_windows, tokens, tokens) < 0.3, -100.0, 0.0)
        self.register_buffer("mask", mask if shifted_windows else None)

    def forward(self, q, k, v):
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.bias
        if self.mask is not None:
            windows, tokens = self.mask.shape[0], self.mask.shape[-1]
            attn = attn.view(-1, windows, self.heads, tokens, tokens) + self.mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, tokens, tokens)
        return torch.softmax(attn, dim=-1) @ v


def _generated_steps(compiled, kind="fused_reduction"):
    return plan_steps(compiled, kind)


def _matches_eager(model, inputs, tol=2e-2):
    model = model.to(CUDA).eval()
    compiled = kiln.compile(model, inputs, enabled_precisions={torch.half}, min_block_size=1)
    with torch.no_grad():
        assert relative_error(compiled(*inputs), model(*inputs)) < tol
        again = [torch.randn_like(i) for i in inputs]
        assert relative_error(compiled(*again), model(*again)) < tol
    return compiled


def test_poolformer_block_fuses_group_norms_and_matches_eager():
    torch.manual_seed(0)
    for groups, fmt in ((1, torch.channels_last), (4, torch.contiguous_format)):
        x = torch.randn(2, 64, 28, 28, device=CUDA).contiguous(memory_format=fmt)
        compiled = _matches_eager(PoolFormerBlock(64, groups), [x])
        steps = _generated_steps(compiled)
        assert any(s.layer.attrs["reduction"]["attrs"].get("type") == "group" for s in steps)


def test_window_attention_fuses_into_one_attention_layer_and_matches_eager():
    """The whole window attention (scale, bias, shifted-window mask, softmax, both matmuls) is one `attention` layer
    (optimize/fuse_attention.py); its softmax with bias and mask as a fused reduction is tested on the CPU
    (tests/engine/optimize/test_fuse_reductions.py) and at model sizes below."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(16, 3, 49, 32, device=CUDA) for _ in range(3))
    for shifted_windows in (0, 16, 4):  # 4 windows: the mask varies over windows and heads, broadcast over 4 images
        compiled = _matches_eager(WindowAttention(shifted_windows=shifted_windows), [q, k, v])
        assert len(_generated_steps(compiled, "attention")) == 1 and not _generated_steps(compiled, "matmul")


def test_generated_reductions_against_their_references_at_model_sizes():
    """Each generated reduction tactic on the GPU at PoolFormer/Swin/ConvNeXt sizes, against the fused reference."""
    from kiln.engine.ir.network import Network
    from kiln.engine.kernels.fused_reduction import fused_reduction_reference, fused_reduction_unfused
    from kiln.engine.kernels.registry import RunContext
    from kiln.engine.kernels.triton_group_norm import fused_group_norm_triton
    from kiln.engine.kernels.triton_norm import fused_norm_rows_triton
    from kiln.engine.kernels.triton_reduce import fused_reduce_triton
    from kiln.engine.kernels.triton_softmax import fused_softmax_triton
    from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
    from kiln.engine.optimize.fuse_reductions import fuse_reduction_layers

    torch.manual_seed(0)
    cases = [
        ("norm", {"type": "group", "groups": 1, "eps": 1e-5}, [1, 64, 56, 56], [1, 64, 56, 56], fused_group_norm_triton),
        ("norm", {"type": "group", "groups": 32, "eps": 1e-5}, [8, 128, 28, 28], [8, 128, 28, 28], fused_group_norm_triton),
        ("softmax", {"op": "softmax", "dim": 3, "dtype": None}, [64, 3, 49, 49], [64, 3, 49, 49], fused_softmax_triton),
        ("softmax", {"op": "log_softmax", "dim": 2, "dtype": None}, [4, 16, 4096], [4, 16, 4096], fused_softmax_triton),
        ("pool", {"op": "adaptive_avg", "output_size": [1, 1]}, [32, 768, 7, 7], [32, 768, 1, 1], fused_reduce_triton),
        ("reduce", {"op": "mean", "dims": [2], "keepdim": False}, [4, 197, 768], [4, 197], fused_reduce_triton),
        ("norm", {"type": "layer", "shape": [768], "eps": 1e-6}, [4, 197, 768], [4, 197, 768], fused_norm_rows_triton),
    ]
    for kind, attrs, shape, out_shape, tactic_fn in cases:
        net = Network()
        x = net.add_input("x", shape, torch.float16)
        r = net.add_input("r", shape, torch.float16)
        extras = []
        if kind == "norm":
            channels = shape[1] if attrs["type"] == "group" else shape[-1]
            extras = [net.add_constant("w", torch.rand(channels).half() + 0.5), net.add_constant("b", torch.randn(channels).half())]
            extras += [None, None]
        (stream,) = net.add_layer("binary", [x, r], [(shape, torch.float16)], {"op": "add"})
        (out,) = net.add_layer(kind, [stream, *extras], [(out_shape, torch.float16)], attrs)
        net.outputs.append(out.name)
        layer = fuse_reduction_layers(fuse_pointwise_groups(net)).layers[0]
        assert layer.kind == "fused_reduction", kind
        values = {"x": torch.randn(shape, device=CUDA).half(), "r": torch.randn(shape, device=CUDA).half()}
        if len(shape) == 4:
            values = {n: t.contiguous(memory_format=torch.channels_last) for n, t in values.items()}
        values.update({n: t.to(CUDA) for n, t in net.constants.items()})
        inputs = [values[n] if n is not None else None for n in layer.inputs]
        ref = fused_reduction_reference(layer, inputs, RunContext({}))
        for fn in (tactic_fn, fused_reduction_unfused):
            got = fn(layer, inputs, RunContext({}))
            assert relative_error(got.float(), ref.float()) < 5e-3, (kind, attrs, fn.__name__)
