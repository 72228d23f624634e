"""Summed parallel conv branches of one input merged into one conv (lowering/merge_parallel_convs.py), against eager."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln
import kiln.lowering
from kiln.capture.export import capture
from kiln.lowering import lower
from kiln.lowering.merge_parallel_convs import merge_parallel_convs
from kiln.report.fused_groups import fused_group
from tests.helpers import check_against_eager, optimized_for_cuda, with_random_stats


def _norm(channels: int) -> nn.BatchNorm2d:
    return with_random_stats(nn.BatchNorm2d(channels), seed=7)


class RepBlock(nn.Module):
    """timm's RepVGG / MobileOne block as trained: kxk conv + BN branches, an identity BN, summed, then ReLU."""

    def __init__(self, cin=8, cout=8, stride=1, groups=1, kernels=(3, 1), identity=True, from_zero=False):
        super().__init__()
        self.from_zero = from_zero  # MobileOne's spelling: `out = 0; out += branch(x)`, and `+= 0` for no identity
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), _norm(cout)) for k in kernels
        )
        self.identity = _norm(cout) if identity else None

    def forward(self, x):
        identity = self.identity(x) if self.identity is not None else (0 if self.from_zero else None)
        out = 0 if self.from_zero else self.branches[0](x)
        for branch in self.branches if self.from_zero else self.branches[1:]:
            out = out + branch(x)
        if identity is not None:
            out += identity
        return torch.relu(out)


class Sum(nn.Module):
    """relu(sum of convs of x, optionally + x itself, + a second input): each conv given as (kernel, stride, padding, dilation)."""

    def __init__(self, convs, plain_identity=False, cin=8, cout=8):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, k, s, p, d) for k, s, p, d in convs)
        self.plain_identity = plain_identity

    def forward(self, x, y=None):
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        if self.plain_identity:
            out = out + x
        if y is not None:
            out = out + y
        return torch.relu(out)


def _lowered_counts(model, inputs) -> dict[str, int]:
    settings = kiln.api.make_settings(model, inputs, {}, enabled_precisions={torch.float32}, torch_executed_ops=(), device="cpu")
    with torch.no_grad():
        captured = capture(model, inputs, {}, settings)
    targets = [str(n.target) for n in lower(captured.graph_module).graph.nodes if n.op == "call_function"]
    return {kind: sum(kind in t for t in targets) for kind in ("convolution", "add", "batch_norm")}


@pytest.mark.parametrize(
    "model, x",
    [
        (RepBlock(), torch.randn(2, 8, 10, 10)),  # RepVGG: 3x3, 1x1, identity
        (RepBlock(8, 16, stride=2, identity=False), torch.randn(2, 8, 11, 11)),  # RepVGG's downsampling block
        (RepBlock(8, 8, groups=4), torch.randn(2, 8, 9, 9)),  # identity as the per-group diagonal
        (RepBlock(8, 8, groups=8, kernels=(3, 3, 3, 1), from_zero=True), torch.randn(2, 8, 9, 9)),  # MobileOne's depthwise block
        (RepBlock(8, 16, kernels=(1, 1), identity=False, from_zero=True), torch.randn(2, 8, 9, 9)),  # and its pointwise one
        (RepBlock(8, 8, kernels=(5, 3, 1)), torch.randn(2, 8, 12, 12)),
    ],
)
def test_rep_blocks_become_one_conv_and_match_eager(model, x):
    model = model.eval()
    assert _lowered_counts(model, [x]) == {"convolution": 1, "add": 0, "batch_norm": 0}
    check_against_eager(model, x, rtol=1e-5)


@pytest.mark.parametrize(
    "convs, plain_identity",
    [
        ([(3, 1, 1, 1), (1, 1, 0, 1)], True),  # conv biases summed, the input itself as the identity
        ([(3, 2, 1, 1), (2, 2, 0, 1)], False),  # a 2x2 reads the lower-right taps of the 3x3's window
        ([(3, 1, 1, 1), ((1, 3), 1, (0, 1), 1), ((3, 1), 1, (1, 0), 1)], False),  # ACNet's asymmetric branches
        ([(3, 1, 2, 2), (1, 1, 0, 2)], True),  # dilated: the 1x1 and the identity at the centre tap
    ],
)
def test_conv_sums_merge(convs, plain_identity):
    model, x = Sum(convs, plain_identity).eval(), torch.randn(2, 8, 10, 10)
    assert _lowered_counts(model, [x])["convolution"] == 1
    check_against_eager(model, x, rtol=1e-5)


def test_only_the_branches_of_one_input_merge_and_the_rest_stay_in_the_sum():
    model, x, y = Sum([(3, 1, 1, 1), (1, 1, 0, 1)]).eval(), torch.randn(2, 8, 10, 10), torch.randn(2, 8, 10, 10)
    assert _lowered_counts(model, [x, y]) == {"convolution": 1, "add": 1, "batch_norm": 0}
    check_against_eager(model, x, y, rtol=1e-5)


class RepMixer(nn.Module):
    """FastViT's token mixer as trained: x + gamma * (mixer(x) - norm(x)), mixer a depthwise MobileOne block."""

    def __init__(self, c=8):
        super().__init__()
        self.mixer = RepBlock(c, c, groups=c, kernels=(3, 1), from_zero=True)
        self.norm = _norm(c)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        mixed = sum(branch(x) for branch in self.mixer.branches) + self.mixer.identity(x)  # no activation
        return torch.relu(x + self.gamma * (mixed - self.norm(x)))


def test_a_sum_with_differences_and_a_layer_scale_merges():
    model, x = RepMixer().eval(), torch.randn(2, 8, 9, 9)
    assert _lowered_counts(model, [x]) == {"convolution": 1, "add": 0, "batch_norm": 0}
    check_against_eager(model, x, rtol=1e-5)


class ScaledOther(Sum):
    def __init__(self, *args):
        super().__init__(*args)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)

    def forward(self, x, y):
        return self.convs[0](x) + self.gamma * (0.5 * y - self.convs[1](x))


def test_terms_of_another_input_stay_in_the_sum_with_their_factors():
    model, x, y = ScaledOther([(3, 1, 1, 1), (1, 1, 0, 1)]).eval(), torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    assert _lowered_counts(model, [x, y])["convolution"] == 1
    check_against_eager(model, x, y, rtol=1e-5)


class SameConvTwice(Sum):
    def forward(self, x):
        y = self.convs[0](x)
        return y * 0.25 + y  # one leaf twice, with factors 0.25 and 1


def test_a_conv_read_twice_by_its_sum_is_one_scaled_conv():
    model, x = SameConvTwice([(3, 1, 1, 1)]).eval(), torch.randn(2, 8, 6, 6)
    assert _lowered_counts(model, [x]) == {"convolution": 1, "add": 0, "batch_norm": 0}
    check_against_eager(model, x, rtol=1e-5)


class ReadElsewhere(Sum):
    def forward(self, x):
        side = self.convs[1](x)
        return torch.relu(self.convs[0](x) + side), side * 2


class OtherInput(Sum):
    def forward(self, x, y):
        return torch.relu(self.convs[0](x) + self.convs[1](y))


class InputWeights(nn.Module):
    def forward(self, x, w3, w1):
        return F.conv2d(x, w3, padding=1) + F.conv2d(x, w1)


@pytest.mark.parametrize(
    "model, inputs",
    [
        (OtherInput([(3, 1, 1, 1), (1, 1, 0, 1)]), [torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)]),
        (ReadElsewhere([(3, 1, 1, 1), (1, 1, 0, 1)]), [torch.randn(2, 8, 6, 6)]),
        (Sum([(3, 1, 1, 1), (3, 1, 2, 2)]), [torch.randn(2, 8, 9, 9)]),  # dilations differ
        (Sum([(3, 1, 2, 2), (2, 1, 1, 2)]), [torch.randn(2, 8, 9, 9)]),  # padding differs by half a dilation step
        (Sum([(1, 1, 0, 1), (3, 2, 3, 1)]), [torch.randn(2, 8, 4, 4)]),  # strides differ (same output size here)
        (InputWeights(), [torch.randn(2, 8, 6, 6), torch.randn(8, 8, 3, 3), torch.randn(8, 8, 1, 1)]),
    ],
)
def test_branches_that_must_not_merge_stay_apart_and_match_eager(model, inputs):
    model = model.eval()
    assert _lowered_counts(model, inputs)["convolution"] == 2
    check_against_eager(model, *inputs, rtol=1e-5)


def test_a_residual_block_keeps_its_add():
    """conv(x) + x: the add is the conv's epilogue already; its identity stays out of the (8-bit) weights."""
    model, x = Sum([(3, 1, 1, 1)], plain_identity=True).eval(), torch.randn(2, 8, 6, 6)
    assert _lowered_counts(model, [x]) == {"convolution": 1, "add": 1, "batch_norm": 0}
    check_against_eager(model, x, rtol=1e-5)


def test_the_merged_conv_takes_the_relu_and_the_network_shrinks(monkeypatch):
    """As a CUDA build sees it (FP16): cast, one conv with its ReLU epilogue, cast; without the pass, three convs."""
    x = torch.randn(2, 8, 10, 10)
    network, plan = optimized_for_cuda(RepBlock().eval(), [x])
    assert [fused_group(s.layer) for s in plan.steps] == ["", "conv+relu", ""]
    unmerged = [p for p in kiln.lowering.LOWERING_PASSES if p is not merge_parallel_convs]
    monkeypatch.setattr(kiln.lowering, "LOWERING_PASSES", unmerged)
    before, before_plan = optimized_for_cuda(RepBlock().eval(), [x])
    assert sum(layer.kind.startswith("conv") for layer in before.layers) == 2
    assert len(network.layers) < len(before.layers)
    assert plan.kernels < before_plan.kernels
