"""Layer scale folded into the conv or linear before it, against eager; multipliers that are not per-channel stay."""

import torch
from torch import nn

import kiln
from kiln.capture.export import capture
from kiln.lowering import lower
from tests.helpers import relative_error


class ConvScaleResidual(nn.Module):
    """EfficientFormer's MLP tail: x + gamma * conv(y), gamma a [C, 1, 1] parameter."""

    def __init__(self, c=8, shape=(8, 1, 1)):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.rand(shape) + 0.5)

    def forward(self, x):
        return x + self.gamma * self.conv(x)


class LinearScale(nn.Module):
    def __init__(self, bias=True, gamma=None):
        super().__init__()
        self.fc = nn.Linear(12, 6, bias=bias)
        self.gamma = nn.Parameter(torch.rand(6) + 0.5 if gamma is None else gamma)

    def forward(self, x):
        return x[..., :6] + self.fc(x) * self.gamma


class ConvTwoReaders(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1))

    def forward(self, x):
        y = self.conv(x)
        # A reader outside the sum: `y * gamma + y` alone would be one conv (lowering/merge_parallel_convs.py).
        return y * self.gamma + torch.relu(y)


def _muls_left(model, x) -> int:
    settings = kiln.api.make_settings(model, [x], {}, enabled_precisions={torch.float32}, torch_executed_ops=(), device="cpu")
    with torch.no_grad():
        captured = capture(model, [x], {}, settings)
    return sum(1 for n in lower(captured.graph_module).graph.nodes if n.op == "call_function" and "mul" in str(n.target))


def _matches_eager(model, x):
    with torch.no_grad():
        assert relative_error(kiln.compile(model, [x], min_block_size=1)(x), model(x)) < 1e-5


def test_per_channel_scales_fold_into_the_layer():
    cases = [
        (ConvScaleResidual(), torch.randn(2, 8, 5, 5)),
        (ConvScaleResidual(shape=(1, 8, 1, 1)), torch.randn(2, 8, 5, 5)),
        (ConvScaleResidual(shape=(1,)), torch.randn(2, 8, 5, 5)),  # one scalar for every channel
        (LinearScale(), torch.randn(3, 4, 12)),
        (LinearScale(bias=False), torch.randn(3, 12)),
    ]
    for model, x in cases:
        model = model.eval()
        assert _muls_left(model, x) == 0, type(model).__name__
        _matches_eager(model, x)


def test_other_multipliers_stay():
    cases = [
        (ConvScaleResidual(shape=(8, 5, 5)), torch.randn(2, 8, 5, 5)),  # varies along H and W too
        (ConvTwoReaders(), torch.randn(2, 8, 5, 5)),  # the conv output is read again
    ]
    for model, x in cases:
        model = model.eval()
        assert _muls_left(model, x) == 1, type(model).__name__
        _matches_eager(model, x)
