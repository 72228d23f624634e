"""Inference BatchNorm folded into the linear before it (LeViT's LinearNorm), checked against eager."""

import torch
from torch import nn

import kiln
from kiln.capture.export import capture
from kiln.lowering import lower
from tests.helpers import relative_error, with_random_stats


class LinearNorm(nn.Module):
    """timm LeViT's spelling: the norm sees the tokens of every image as one batch of rows."""

    def __init__(self, cin=16, cout=24, bias=False):
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=bias)
        self.bn = with_random_stats(nn.BatchNorm1d(cout))

    def forward(self, x):
        x = self.linear(x)
        return torch.nn.functional.hardswish(self.bn(x.flatten(0, 1)).reshape_as(x))


class Head(nn.Module):
    """A linear then BatchNorm1d on [batch, features]: no views between."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.bn = with_random_stats(nn.BatchNorm1d(8))

    def forward(self, x):
        return self.bn(self.fc(x))


class NormOverTokens(nn.Module):
    """BatchNorm1d over [batch, features, tokens] after a permute: the channels are not the linear's last dim."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.bn = with_random_stats(nn.BatchNorm1d(8))

    def forward(self, x):
        return self.bn(self.fc(x).permute(0, 2, 1))


def _lowered_targets(model, x):
    settings = kiln.api.make_settings(model, [x], {}, enabled_precisions={torch.float32}, torch_executed_ops=(), device="cpu")
    with torch.no_grad():
        captured = capture(model, [x], {}, settings)
    return [str(n.target) for n in lower(captured.graph_module).graph.nodes if n.op == "call_function"]


def test_linear_norm_folds_into_the_linear_and_matches_eager():
    for model, x in ((LinearNorm().eval(), torch.randn(2, 7, 16)), (LinearNorm(bias=True).eval(), torch.randn(3, 5, 16))):
        targets = _lowered_targets(model, x)
        assert not any("batch_norm" in t for t in targets), targets
        compiled = kiln.compile(model, [x], min_block_size=1)
        with torch.no_grad():
            assert relative_error(compiled(x), model(x)) < 1e-5


def test_a_head_norm_folds_too():
    model, x = Head().eval(), torch.randn(4, 16)
    assert not any("batch_norm" in t for t in _lowered_targets(model, x))
    with torch.no_grad():
        assert relative_error(kiln.compile(model, [x], min_block_size=1)(x), model(x)) < 1e-5


def test_a_norm_over_another_dim_stays():
    model, x = NormOverTokens().eval(), torch.randn(2, 5, 16)
    assert any("batch_norm" in t for t in _lowered_targets(model, x))
    with torch.no_grad():
        assert relative_error(kiln.compile(model, [x], min_block_size=1)(x), model(x)) < 1e-5


def test_with_the_norm_gone_the_views_around_it_collapse_and_the_linear_takes_the_activation():
    # flatten(0, 1) then reshape_as(x) is one view back to the linear's own shape: canonicalize_views drops it,
    # so on a CUDA build the hardswish becomes the linear's epilogue instead of a kernel of its own.
    from tests.helpers import optimized_for_cuda

    network, plan = optimized_for_cuda(nn.Sequential(LinearNorm(), nn.Linear(24, 8)).eval(), [torch.randn(2, 7, 16)])
    kinds = [layer.kind for layer in network.layers]
    assert "norm" not in kinds and "reshape" not in kinds and "unary" not in kinds, kinds
    first = next(layer for layer in network.layers if layer.kind == "linear")
    assert [op["op"] for op in first.attrs["epilogue"]["ops"]] == ["hardswish"]
