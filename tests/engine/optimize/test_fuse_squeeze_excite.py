"""Squeeze-excite fusion on real SE modules: captured, converted and optimized as a CUDA build would, the gate
becomes one `squeeze_excite` layer; the plan gives eager's outputs on its reference tactics and with the generated
gate kernel (every config) and the unfused GEMMs swapped in (Triton's interpreter)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.triton_squeeze_excite import CONFIGS, MAX_HIDDEN, triton
from kiln.engine.optimize.fuse_squeeze_excite import fuse_squeeze_excite_gates
from kiln.engine.plan import Step
from kiln.engine.runtime import PlanExecutor
from tests.engine.optimize.test_fuse_pointwise import run
from tests.helpers import optimized_for_cuda, relative_error

CONV = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}


class SEBlock(nn.Module):
    """depthwise conv -> SiLU -> squeeze-excite -> 1x1 projection, in the ways timm's SE modules write the gate."""

    def __init__(self, c=24, hidden=6, style="timm"):
        super().__init__()
        self.style = style
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        linear = style == "linear"
        self.fc1 = nn.Linear(c, hidden, bias=False) if linear else nn.Conv2d(c, hidden, 1)
        self.fc2 = nn.Linear(hidden, c) if linear else nn.Conv2d(hidden, c, 1)
        self.proj = nn.Conv2d(c, 16, 1)

    def forward(self, x):
        x = F.silu(self.dw(x))
        if self.style == "timm":  # EfficientNet, RegNetY: mean(keepdim) -> conv -> SiLU -> conv -> sigmoid
            g = torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True)))))
        elif self.style == "mobilenet":  # MobileNetV3, GhostNet: adaptive pool -> conv -> ReLU -> conv -> hard-sigmoid
            g = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        elif self.style == "written_out":  # a hard-sigmoid spelled as arithmetic: a pointwise group after the conv
            g = (self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))) * (1 / 6) + 0.5).clamp(0, 1)
        else:  # mean without keepdim -> linear -> ReLU -> linear -> sigmoid -> view
            g = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3)))))).view(x.shape[0], -1, 1, 1)
        return self.proj(x * g)


@pytest.mark.skipif(triton is None or torch.cuda.is_available(), reason="needs Triton's interpreter (no GPU)")
@pytest.mark.parametrize("style", ["timm", "mobilenet", "written_out", "linear"])
def test_se_gate_fuses_and_its_plans_match_eager(style):
    torch.manual_seed(0)
    model = SEBlock(style=style).eval()
    x = torch.randn(2, 24, 6, 5)
    network, plan = optimized_for_cuda(model, [x])
    kinds = [m.kind for m in network.layers]
    assert kinds.count("squeeze_excite") == 1 and "reduce" not in kinds and "pool" not in kinds, kinds
    (se,) = [m for m in network.layers if m.kind == "squeeze_excite"]
    assert bool(se.attrs["stages"][1]["after"]) == (style == "written_out")
    with torch.no_grad():
        eager = model.half()(x.half())
    values = [x.half().contiguous(memory_format=torch.channels_last)]
    arena = torch.zeros(plan.arena.size, dtype=torch.uint8)
    (expected,) = PlanExecutor(plan).run(values, arena)
    assert relative_error(expected.float(), eager.float()) < 1e-2
    for name in [*CONFIGS, "triton_unfused"]:
        plan.steps = [Step(s.layer, name) if s.layer.kind == "squeeze_excite" else s for s in plan.steps]
        (got,) = PlanExecutor(plan).run(values, torch.zeros(plan.arena.size, dtype=torch.uint8))
        assert relative_error(got.float(), expected.float()) < 4e-3, name


def se_network(c=8, hidden=4, second_reader=False, groups=1):
    """mean -> conv_epilogue(relu) -> conv_epilogue(sigmoid) as the conv epilogue pass leaves an SE gate."""
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [2, c, 5, 5], torch.float32)
    w1 = net.add_constant("w1", torch.randn(hidden, c // groups, 1, 1))
    b1 = net.add_constant("b1", torch.randn(hidden))
    w2 = net.add_constant("w2", torch.randn(c, hidden, 1, 1))
    (m,) = net.add_layer("reduce", [x], [([2, c, 1, 1], torch.float32)], {"op": "mean", "dims": [2, 3], "keepdim": True})
    attrs = {**CONV, "groups": groups, "activation": "relu", "residual": False}
    (h,) = net.add_layer("conv_epilogue", [m, w1, b1, None], [([2, hidden, 1, 1], torch.float32)], attrs)
    attrs = {**attrs, "groups": 1, "activation": "sigmoid"}
    (g,) = net.add_layer("conv_epilogue", [h, w2, None, None], [([2, c, 1, 1], torch.float32)], attrs)
    net.outputs.append(g.name)
    if second_reader:
        net.outputs.append(h.name)
    return net, {"x": torch.randn(2, c, 5, 5), **net.constants}


def test_the_fused_layers_reference_is_exactly_the_unfused_layers():
    net, values = se_network()
    expected = run(net, values)
    fused = fuse_squeeze_excite_gates(net)
    assert [m.kind for m in fused.layers] == ["squeeze_excite"]
    assert fused.layers[0].inputs == ["x", "w1", "b1", "w2", None]
    # Plans store the layer as JSON: the fused attrs survive a round trip unchanged.
    assert Layer.from_json(json.loads(json.dumps(fused.layers[0].to_json()))) == fused.layers[0]
    got = run(fused, values)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_a_read_hidden_value_a_grouped_conv_or_a_too_wide_hidden_layer_is_left_alone():
    for net, _ in (se_network(second_reader=True), se_network(groups=2), se_network(hidden=MAX_HIDDEN + 8)):
        assert "squeeze_excite" not in [m.kind for m in fuse_squeeze_excite_gates(net).layers]
