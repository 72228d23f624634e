"""Depthwise conv + channel norm fusion on ConvNeXt-like blocks: captured, converted and optimized as a CUDA build
would, each block's conv_dw -> permute -> LayerNorm becomes one `depthwise_norm` layer; the network gives eager's
outputs with the references and with the generated kernel swapped in (Triton's interpreter). A conv whose output is
read twice, or that is not depthwise, stays as it was."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kiln.engine.kernels.registry import REFERENCE, BuildTarget, RunContext, get_tactic, tactics_for
from kiln.engine.kernels.triton_depthwise_norm import CONFIGS, triton
from tests.helpers import network_as_cuda_build, relative_error

CPU = BuildTarget(torch.device("cpu"), torch.float16)


class ConvNeXtBlock(nn.Module):
    """timm's ConvNeXtBlock (conv_mlp=False): dw conv -> permute -> LayerNorm -> MLP -> permute -> gamma -> residual."""

    def __init__(self, c=24, k=7, norm="permute", second_reader=False, groups=None):
        super().__init__()
        self.norm_style, self.second_reader = norm, second_reader
        self.dw = nn.Conv2d(c, c, k, padding=k // 2, groups=groups or c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        y = self.dw(x)
        if self.norm_style == "permute":
            z = self.norm(y.permute(0, 2, 3, 1))
        else:  # timm's LayerNorm2d: permute, F.layer_norm over the channels, permute back (the MLP then permutes again)
            z = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), self.norm.weight, self.norm.bias, 1e-6).permute(0, 3, 1, 2)
            z = z.permute(0, 2, 3, 1)
        z = (self.fc2(F.gelu(self.fc1(z))) * self.gamma).permute(0, 3, 1, 2)
        out = x + z
        return out + y if self.second_reader else out


def run_network(network, values: dict, fused_tactic: str = REFERENCE) -> dict:
    """Every layer on its reference, but depthwise_norm layers on `fused_tactic` (with its prepared weight)."""
    env = {**{n: t.to(network.tensors[n].dtype) for n, t in network.constants.items()}, **values}
    for layer in network.layers:
        tactic = get_tactic("depthwise_norm", fused_tactic) if layer.kind == "depthwise_norm" else None
        if tactic is None:
            (tactic,) = [t for t in tactics_for(layer, CPU) if t.name == REFERENCE]
        inputs = [env.get(n) if n is not None else None for n in layer.inputs]
        if tactic.prepare is not None:
            prepared = tactic.prepare(layer, {n: env[n] for n in layer.inputs if n in network.constants})
            inputs = [prepared.get(n, t) for n, t in zip(layer.inputs, inputs)]
        out = tactic.fn(layer, inputs, RunContext({}))
        for name, value in zip(layer.outputs, [out] if isinstance(out, torch.Tensor) else out):
            env[name] = value
    return {n: env[n] for n in network.outputs}


def two_blocks(**kwargs):
    torch.manual_seed(0)
    return nn.Sequential(ConvNeXtBlock(**kwargs), ConvNeXtBlock(**kwargs)).eval()


@pytest.mark.parametrize("norm", ["permute", "layer_norm_2d"])
def test_each_block_gets_one_depthwise_norm_layer_that_matches_eager(norm):
    model = two_blocks(norm=norm)
    x = torch.randn(2, 24, 6, 5)
    network, _ = network_as_cuda_build(model, [x])
    kinds = [m.kind for m in network.layers]
    assert kinds.count("depthwise_norm") == 2 and "norm" not in kinds and "conv" not in kinds, kinds
    fused = next(m for m in network.layers if m.kind == "depthwise_norm")
    assert fused.attrs["fused_ops"] == ["conv:", "permute:", "norm:layer"] and fused.attrs["norm"]["eps"] == 1e-6
    # Every permute around the fused layers (the residual stream's, the MLP's) is still a zero-copy view.
    assert all(m.attrs.get("view_ok") for m in network.layers if m.kind == "permute" and m.outputs[0] not in network.outputs)
    with torch.no_grad():
        eager = model.half()(x.half()).float()
    (name,) = network.inputs
    values = {name: x.half().contiguous(memory_format=torch.channels_last)}
    (expected,) = run_network(network, values).values()
    assert relative_error(expected.float(), eager) < 1e-2


@pytest.mark.skipif(triton is None or torch.cuda.is_available(), reason="needs Triton's interpreter (no GPU)")
def test_the_generated_kernel_in_the_network_matches_the_references():
    model = two_blocks()
    x = torch.randn(1, 24, 5, 4)
    network, _ = network_as_cuda_build(model, [x])
    (name,) = network.inputs
    values = {name: x.half().contiguous(memory_format=torch.channels_last)}
    (expected,) = run_network(network, values).values()
    for tactic in (next(iter(CONFIGS)), "triton_depthwise_unfused"):
        (got,) = run_network(network, values, tactic).values()
        assert relative_error(got.float(), expected.float()) < 4e-3, tactic


@pytest.mark.parametrize(
    "kwargs",
    [dict(second_reader=True), dict(groups=1, k=3), dict(groups=12)],
    ids=["conv-read-twice", "not-depthwise", "grouped"],
)
def test_a_conv_that_does_not_qualify_stays_unfused(kwargs):
    torch.manual_seed(0)
    model = ConvNeXtBlock(**kwargs).eval()
    network, _ = network_as_cuda_build(model, [torch.randn(1, 24, 5, 5)])
    kinds = [m.kind for m in network.layers]
    assert "depthwise_norm" not in kinds and "norm" in kinds, kinds


def test_large_images_keep_the_unfused_pair(monkeypatch):
    # Past MAX_FUSED_PIXELS output pixels the H100 ran cuDNN/Triton depthwise + row norm faster than the fusion.
    from kiln.engine.optimize import fuse_depthwise_norm

    monkeypatch.setattr(fuse_depthwise_norm, "MAX_FUSED_PIXELS", 2 * 6 * 5 - 1)
    network, _ = network_as_cuda_build(two_blocks(), [torch.randn(2, 24, 6, 5)])
    kinds = [m.kind for m in network.layers]
    assert "depthwise_norm" not in kinds and kinds.count("norm") == 2, kinds
