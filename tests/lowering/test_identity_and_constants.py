"""Lowering removes data movement that moves nothing and folds constant index arithmetic; results unchanged."""

import torch
import torch.nn.functional as F
from torch import nn

import kiln
from kiln.capture.export import capture
from kiln.lowering import lower
from tests.helpers import FP32_RTOL, relative_error


def _lowered_targets(model, x):
    settings = kiln.api.make_settings(
        model, [x], {}, enabled_precisions={torch.float32}, torch_executed_ops=(), device="cpu", min_block_size=1
    )
    with torch.no_grad():
        gm = lower(capture(model, [x], {}, settings).graph_module)
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


class WindowShift(nn.Module):
    """Swin's moves: pad to a window multiple (zero here), a roll whose indices are arange arithmetic,
    a gathered bias at constant indices, and matmul's expand to the shape it already has."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(13, 2))
        self.register_buffer("index", torch.randint(0, 13, (16,)))

    def forward(self, x):
        x = F.pad(x, (0, 0, 0, 0))
        x = torch.roll(x, shifts=3, dims=2)
        bias = self.table[self.index].t().reshape(2, 4, 4)
        return x.expand(x.shape) + bias.sum(0)


def test_zero_pads_same_shape_expands_and_constant_indices_disappear():
    torch.manual_seed(0)
    model = WindowShift().eval()
    x = torch.randn(2, 3, 4, 4)
    targets = _lowered_targets(model, x)
    assert not any("pad" in t or "expand" in t or "arange" in t or "remainder" in t or "fmod" in t for t in targets), targets
    compiled = kiln.compile(model, [x], min_block_size=1)
    with torch.no_grad():
        assert relative_error(compiled(x), model(x)) < FP32_RTOL


def test_a_real_pad_and_a_real_expand_stay():
    class Moves(nn.Module):
        def forward(self, x):
            return F.pad(x, (1, 0, 0, 2)).sum(1, keepdim=True).expand(2, 3, 6, 5)

    x = torch.randn(2, 3, 4, 4)
    targets = _lowered_targets(Moves().eval(), x)
    assert any("pad" in t for t in targets) and any("expand" in t for t in targets)
    compiled = kiln.compile(Moves().eval(), [x], min_block_size=1)
    assert relative_error(compiled(x), Moves()(x)) < FP32_RTOL
