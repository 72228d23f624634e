import pytest
import torch
import torch.nn.functional as F

import kiln
from tests.helpers import Lambda, check_against_eager


def _stats(channels):
    """running_mean, running_var, weight, bias"""
    return torch.randn(channels), torch.rand(channels) + 0.5, torch.randn(channels), torch.randn(channels)


def _batch_norm_module(channels, dims):
    bn = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d}[dims](channels)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    return bn


# name: (model, input shape)
NORMS = {
    "batch_norm_2d": (_batch_norm_module(4, 2), (2, 4, 5, 6)),
    "batch_norm_1d_sequence": (_batch_norm_module(4, 1), (2, 4, 9)),
    "batch_norm_1d_features": (_batch_norm_module(4, 1), (3, 4)),
    "batch_norm_no_affine": (Lambda(lambda x, m, v: F.batch_norm(x, m, v, eps=1e-3), torch.randn(4), torch.rand(4) + 0.5), (2, 4, 5, 6)),
    "batch_norm_after_add": (Lambda(lambda x, m, v, w, b: F.batch_norm(x + 1, m, v, w, b), *_stats(4)), (2, 4, 5, 6)),
    "batch_norm_batch_statistics": (
        Lambda(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), torch.randn(4), torch.randn(4)),
        (3, 4, 5),
    ),
    "layer_norm_last_dim": (torch.nn.LayerNorm(8), (2, 5, 8)),
    "layer_norm_two_dims": (torch.nn.LayerNorm((5, 8), eps=1e-3), (2, 5, 8)),
    "layer_norm_no_affine": (torch.nn.LayerNorm(8, elementwise_affine=False), (2, 5, 8)),
    "layer_norm_no_bias": (torch.nn.LayerNorm(8, bias=False), (2, 5, 8)),
    "rms_norm": (torch.nn.RMSNorm(8), (2, 5, 8)),
    "rms_norm_eps_no_weight": (torch.nn.RMSNorm((5, 8), eps=1e-4, elementwise_affine=False), (2, 5, 8)),
    "group_norm": (torch.nn.GroupNorm(2, 6), (2, 6, 5, 4)),
    "group_norm_no_affine": (torch.nn.GroupNorm(3, 6, affine=False), (2, 6, 7)),
    "group_norm_per_channel": (torch.nn.GroupNorm(6, 6, eps=1e-3), (2, 6, 5, 4)),
    "instance_norm": (torch.nn.InstanceNorm2d(4), (2, 4, 5, 6)),
    "instance_norm_affine": (torch.nn.InstanceNorm2d(4, affine=True), (2, 4, 5, 6)),
    "instance_norm_1d": (torch.nn.InstanceNorm1d(4), (2, 4, 9)),
    "instance_norm_running_stats": (torch.nn.InstanceNorm2d(4, track_running_stats=True), (2, 4, 5, 6)),
}


@pytest.mark.parametrize("name", sorted(NORMS))
def test_norm_matches_eager(name):
    model, shape = NORMS[name]
    for p in model.parameters():
        p.data.uniform_(0.5, 1.5)
    compiled = check_against_eager(model, torch.randn(shape) * 2 + 0.5)
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "norm" in kinds


def test_instance_norm_running_stats_are_read_not_updated():
    model = torch.nn.InstanceNorm2d(4, track_running_stats=True)
    model.running_mean.uniform_(-1, 1)
    model.running_var.uniform_(0.5, 2)
    before = model.running_mean.clone()
    compiled = check_against_eager(model, torch.randn(2, 4, 5, 6))
    compiled(torch.randn(2, 4, 5, 6))
    assert torch.equal(model.running_mean, before)


def test_batch_norm_statistics_output_falls_back_with_reason():
    def fn(x, m, v, w, b):
        out, saved_mean, saved_rstd = torch.ops.aten._native_batch_norm_legit_no_training(x, w, b, m, v, 0.1, 1e-5)
        return out.relu(), saved_mean

    model = Lambda(fn, *_stats(4)).eval()
    x = torch.randn(2, 4, 5, 6)
    compiled = kiln.compile(model, [x], min_block_size=1)
    rows = {r.op: r for r in compiled.report.rows}
    row = rows["aten._native_batch_norm_legit_no_training.default"]
    assert row.where == "pytorch"
    assert "statistics" in row.reason
    # The saved statistics of the inference kernel hold no defined values: compare the normalised output only.
    torch.testing.assert_close(compiled(x)[0], model(x)[0])
