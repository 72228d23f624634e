"""Depthwise conv + channel norm (one `depthwise_norm` layer, kernels/triton_depthwise_norm.py) on the GPU: every tactic
against the reference at ConvNeXt-T's four stage shapes (7x7, 96 to 768 channels) and at stride 2 / RMS / no affine;
a small ConvNeXt (two stages, a LayerNorm2d + stride-2 downsample between) compiled in FP16 against eager, with each
of its blocks one depthwise_norm step; the same model forced onto each fused config, from 2 threads on 2 streams.

Run with -s to see, per depthwise_norm layer, the tactic the builder kept and the times it measured."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln
from kiln.engine.builder import build
from kiln.engine.kernels.registry import BuildTarget, RunContext, get_tactic, tactics_for
from kiln.engine.kernels.triton_depthwise_norm import CONFIGS
from tests.engine.kernels.test_triton_depthwise_norm import make_case, reference
from tests.engine.optimize.test_fuse_depthwise_norm import ConvNeXtBlock
from tests.gpu.test_concurrency import _hammer
from tests.helpers import plan_steps, print_timings, relative_error

CUDA = torch.device("cuda")
TARGET = BuildTarget(CUDA, torch.float16)


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class SmallConvNeXt(nn.Module):
    def __init__(self, dims=(96, 192)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[0]), ConvNeXtBlock(dims[0]))
        self.down = nn.Sequential(LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], 2, stride=2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(dims[1]), ConvNeXtBlock(dims[1]))

    def forward(self, x):
        return self.stage2(self.down(self.stage1(self.stem(x)))).mean((2, 3))


def _steps(compiled):
    return plan_steps(compiled, "depthwise_norm")



def _run(name, layer, inputs):
    tactic = get_tactic("depthwise_norm", name)
    prepared = tactic.prepare(layer, {"w": inputs[1]}) if tactic.prepare else {}
    return tactic.fn(layer, [inputs[0], prepared.get("w", inputs[1]), *inputs[2:]], RunContext({}))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(c=96, hw=56, k=7, n=2),
        dict(c=192, hw=28, k=7, n=2),
        dict(c=384, hw=14, k=7, n=2),
        dict(c=768, hw=7, k=7, n=2),
        dict(c=40, hw=15, k=5, stride=2),
        dict(c=96, hw=9, k=3, norm="rms"),
        dict(c=72, hw=9, k=7, conv_bias=False, affine=False, activation="gelu"),
    ],
    ids=["c96", "c192", "c384", "c768", "5x5-s2-c40", "rms", "nobias-noaffine-gelu"],
)
def test_every_tactic_matches_the_reference(kwargs):
    torch.manual_seed(0)
    layer, inputs = make_case(**kwargs)
    inputs = [t.to(CUDA) if t is not None else None for t in inputs]
    with torch.backends.cudnn.flags(allow_tf32=False):  # an FP32 reference, not one rounded through TF32
        ref = reference(layer, inputs)
    names = [t.name for t in tactics_for(layer, TARGET) if t.name != "reference"]
    assert set(CONFIGS) <= set(names) and "aten_unfused" in names, names
    for name in names:
        out = _run(name, layer, inputs)
        assert out.shape == ref.shape and out.dtype == torch.float16, name
        assert relative_error(out.float(), ref) < 3e-3, name


def test_small_convnext_compiles_with_one_depthwise_norm_per_block_and_matches_eager():
    torch.manual_seed(0)
    model = SmallConvNeXt().to(CUDA).eval()
    x = torch.randn(4, 3, 64, 64, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    steps = _steps(compiled)
    assert len(steps) == 4
    print_timings(steps)
    with torch.no_grad():
        assert relative_error(compiled(x).float(), model(x)) < 2e-2
        other = torch.randn_like(x)
        assert relative_error(compiled(other).float(), model(other)) < 2e-2


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_small_convnext_on_each_fused_config_matches_eager_from_two_streams(config, monkeypatch):
    """The depthwise_norm layers forced onto one fused config (the builder's only candidate), compiled, against
    eager; then 2 threads, each on its own stream, calling the compiled module with their own inputs."""
    real = build.tactics_for

    def only_config(layer, target):
        found = real(layer, target)
        return [t for t in found if t.name == config] if layer.kind == "depthwise_norm" else found

    monkeypatch.setattr(build, "tactics_for", only_config)
    torch.manual_seed(1)
    model = SmallConvNeXt().to(CUDA).eval()
    make = lambda: torch.randn(2, 3, 64, 64, device=CUDA)
    x = make()
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    assert [s.tactic for s in _steps(compiled)] == [config] * 4
    with torch.no_grad():
        assert relative_error(compiled(x).float(), model(x)) < 2e-2
    assert _hammer(compiled, model, make, own_streams=True, threads=2) < 2e-2
