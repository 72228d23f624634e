"""The FP16/BF16 implicit-GEMM conv (kernels/triton_conv.py) on the GPU: every tile config against eager at
cspresnet50/resnet50-like shapes (3x3 at 56/28/14, stride-2 3x3, 1x1 stride-2, the 7x7/2 stem over 3 channels,
leaky_relu, residual + relu); a small CSP-style CNN with leaky_relu compiled in FP16 against eager with its
convs forced onto each config; the same from 2 threads on 2 streams.

Run with -s to see, per conv layer of the small CNN, the tactic the builder kept and the times it measured."""

import pytest
import torch
from torch import nn

import kiln
from kiln.engine.builder import build
from kiln.engine.ir.network import Layer
from kiln.engine.kernels.aten_conv import conv_epilogue_reference
from kiln.engine.kernels.registry import BuildTarget, RunContext, get_tactic, tactics_for
from kiln.engine.kernels.triton_conv import CONFIGS
from tests.engine.kernels.test_triton_conv import attrs_of
from tests.gpu.test_concurrency import _hammer
from tests.helpers import plan_steps, print_timings, relative_error

CUDA = torch.device("cuda")
TARGET = BuildTarget(CUDA, torch.float16)
KINDS = ("conv", "conv_epilogue")


def make_case(n, cin, cout, hw, k, stride=1, padding=None, activation="leaky_relu", residual=False, dtype=torch.float16):
    padding = k // 2 if padding is None else padding
    attrs = attrs_of((stride, stride), (padding, padding), (1, 1), activation, residual)
    kind = "conv_epilogue" if activation or residual else "conv"
    layer = Layer(kind, "c", ["x", "w", "b"] + (["r"] if kind == "conv_epilogue" else []), ["y"], attrs, precision=str(dtype).split(".")[1])
    x = torch.randn(n, cin, hw, hw, device=CUDA, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(cout, cin, k, k, device=CUDA) / (cin * k * k) ** 0.5).to(dtype)
    b = torch.randn(cout, device=CUDA, dtype=dtype)
    oh = (hw + 2 * padding - k) // stride + 1
    r = torch.randn(n, cout, oh, oh, device=CUDA, dtype=dtype).contiguous(memory_format=torch.channels_last) if residual else None
    return layer, [x, w, b] + ([r] if kind == "conv_epilogue" else [])


def _run(name, layer, inputs):
    tactic = get_tactic(layer.kind, name)
    prepared = tactic.prepare(layer, {"w": inputs[1]})
    return tactic.fn(layer, [inputs[0], prepared["w"], *inputs[2:]], RunContext({}))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=4, cin=64, cout=64, hw=56, k=3),
        dict(n=4, cin=128, cout=128, hw=28, k=3, residual=True, activation="relu"),
        dict(n=4, cin=256, cout=256, hw=14, k=3, activation=None),
        dict(n=4, cin=128, cout=256, hw=28, k=3, stride=2),
        dict(n=4, cin=3, cout=64, hw=224, k=7, stride=2),
        dict(n=4, cin=256, cout=512, hw=28, k=1, stride=2, padding=0, activation=None),
        dict(n=2, cin=96, cout=80, hw=17, k=5, activation="silu"),
        dict(n=2, cin=64, cout=64, hw=28, k=3, dtype=torch.bfloat16),
    ],
    ids=["3x3-56-c64", "3x3-28-c128-res-relu", "3x3-14-c256-plain", "3x3-s2", "stem-7x7-s2-c3", "1x1-s2", "5x5-silu-odd", "bf16"],
)
def test_every_config_matches_eager(kwargs):
    torch.manual_seed(0)
    layer, inputs = make_case(**kwargs)
    target = BuildTarget(CUDA, inputs[0].dtype)
    names = [t.name for t in tactics_for(layer, target)]
    assert set(CONFIGS) <= set(names), names
    with torch.backends.cudnn.flags(allow_tf32=False):  # an FP32 reference, not one rounded through TF32
        args = [t.float() if t is not None else None for t in inputs] + [None] * (4 - len(inputs))
        ref = conv_epilogue_reference(layer, args, None)
    for name in CONFIGS:
        out = _run(name, layer, inputs)
        assert out.shape == ref.shape and out.dtype == inputs[0].dtype, name
        assert out.is_contiguous(memory_format=torch.channels_last), name
        assert relative_error(out.float(), ref) < (1e-2 if out.dtype == torch.bfloat16 else 3e-3), name


def test_a_1x1_stride_1_conv_is_left_to_the_gemm():
    layer, inputs = make_case(n=1, cin=64, cout=64, hw=8, k=1, padding=0)
    with pytest.raises(ValueError, match="triton_gemm_1x1"):
        get_tactic(layer.kind, next(iter(CONFIGS))).prepare(layer, {"w": inputs[1]})


def conv_block(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01))


class CspLike(nn.Module):
    """cspresnet's pattern: a stride-2 stem, 3x3 convs with BN + leaky_relu, a residual add before a leaky_relu."""

    def __init__(self):
        super().__init__()
        self.stem = conv_block(3, 32, 7, 2)
        self.a = conv_block(32, 64, 3, 2)
        self.b = conv_block(64, 64)
        self.c = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        self.act = nn.LeakyReLU(0.01)
        self.d = conv_block(64, 128, 3, 2)

    def forward(self, x):
        y = self.a(self.stem(x))
        y = self.act(self.c(self.b(y)) + y)
        return self.d(y).mean((2, 3))


def _convs(compiled):
    return plan_steps(compiled, *KINDS)



def _model():
    torch.manual_seed(0)
    model = CspLike().to(CUDA).eval()
    with torch.no_grad():  # BN statistics that are not the identity, so the folded weights are exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_small_csp_cnn_compiles_and_matches_eager():
    model = _model()
    x = torch.randn(4, 3, 64, 64, device=CUDA).contiguous(memory_format=torch.channels_last)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    steps = _convs(compiled)
    print_timings(steps)
    assert sum(s.layer.attrs.get("activation") == "leaky_relu" for s in steps) >= 4
    assert all(set(CONFIGS) <= set(s.timings) for s in steps if s.timings), "every config is timed on every conv"
    with torch.no_grad():
        assert relative_error(compiled(x).float(), model(x)) < 2e-2
        other = torch.randn_like(x)
        assert relative_error(compiled(other).float(), model(other)) < 2e-2


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_small_csp_cnn_on_each_config_matches_eager_from_two_streams(config, monkeypatch):
    """Every conv forced onto one config (the builder's only candidate), compiled, against eager; then 2 threads,
    each on its own stream, calling the compiled module with their own inputs."""
    real = build.tactics_for

    def only_config(layer, target):
        found = real(layer, target)
        return [t for t in found if t.name == config] if layer.kind in KINDS else found

    monkeypatch.setattr(build, "tactics_for", only_config)
    model = _model()
    make = lambda: torch.randn(2, 3, 64, 64, device=CUDA).contiguous(memory_format=torch.channels_last)
    x = make()
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    steps = _convs(compiled)
    assert steps and all(s.tactic == config for s in steps), [s.tactic for s in steps]
    with torch.no_grad():
        assert relative_error(compiled(x).float(), model(x)) < 2e-2
    assert _hammer(compiled, model, make, own_streams=True, threads=2) < 2e-2
