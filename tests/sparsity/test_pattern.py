"""2:4 pattern detection, magnitude pruning (odd shapes included), layer selection and the summary table."""

import pytest
import torch
from torch import nn

import kiln
from kiln.sparsity import is_2to4, kernel_shape_problem, mask_2to4, prune_2to4, sparsity_summary


def test_is_2to4_counts_non_zeros_per_group_of_four_along_the_input_dim():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3], [0, 0, 0, 0, 4, 5, 0, 0]])
    assert is_2to4(w)
    w[1, 6] = 6  # third non-zero in the second group of row 1
    assert not is_2to4(w)
    # Groups run along the input (last) dim, not the output dim: the transpose of a 2:4 matrix need not be 2:4.
    assert not is_2to4(torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]).t())


def test_is_2to4_on_a_1x1_conv_weight_and_a_ragged_tail_group():
    conv = torch.zeros(3, 8, 1, 1)
    conv[:, :2] = 1
    assert is_2to4(conv)
    conv[0, 2] = 1
    assert not is_2to4(conv)
    tail = torch.tensor([[1.0, 1, 0, 0, 1, 1, 0]])  # 7 inputs: the last group of three has two non-zeros
    assert is_2to4(tail)
    tail[0, 6] = 1
    assert not is_2to4(tail)
    with pytest.raises(ValueError, match=r"\[Cout, Cin, 1, 1\]"):
        is_2to4(torch.ones(4, 4, 3, 3))


def test_mask_keeps_the_two_largest_magnitudes_of_each_group():
    w = torch.tensor([[0.1, -5.0, 3.0, 0.2, 1.0, 2.0, -3.0, 4.0]])
    assert mask_2to4(w).tolist() == [[False, True, True, False, False, False, True, True]]
    # All-zero and single-non-zero groups still give exactly two kept positions (zeros kept are harmless).
    assert mask_2to4(torch.tensor([[0.0, 0, 0, 0, 0, 0, 7, 0]])).sum().item() == 4


@pytest.mark.parametrize("shape", [(16, 32), (5, 7), (3, 6), (1, 1), (9, 13)])
def test_pruned_weights_are_2to4_and_keep_the_largest(shape):
    torch.manual_seed(0)
    w = torch.randn(shape)
    mask = mask_2to4(w)
    pruned = w * mask
    assert is_2to4(pruned)
    full = shape[1] // 4 * 4
    # Every complete group keeps exactly two; the kept magnitudes dominate the dropped ones group by group.
    kept = mask[:, :full].reshape(shape[0], -1, 4)
    assert (kept.sum(-1) == 2).all()
    groups = w[:, :full].abs().reshape(shape[0], -1, 4)
    if groups.numel():
        low_kept = torch.where(kept, groups, torch.inf).amin(-1)
        high_dropped = torch.where(~kept, groups, -torch.inf).amax(-1)
        assert (low_kept >= high_dropped).all()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(8, 16, 1)
        self.k3 = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 1, groups=16)
        self.head = nn.Sequential(nn.Linear(16, 30), nn.ReLU(), nn.Linear(30, 10))


def test_prune_2to4_prunes_linear_and_pointwise_convs_in_place_and_returns_masks():
    torch.manual_seed(0)
    net = Net()
    k3 = net.k3.weight.clone()
    masks = prune_2to4(net)
    assert set(masks) == {"pw", "head.0", "head.2"}
    for name, mask in masks.items():
        weight = net.get_submodule(name).weight
        assert mask.shape == weight.shape and mask.dtype == torch.bool
        assert is_2to4(weight) and torch.equal(weight, weight * mask)
    assert torch.equal(net.k3.weight, k3)  # 3x3 and grouped convs are not GEMMs over their weight


def test_prune_2to4_layers_and_exclude_select_by_name_and_pattern():
    net = Net()
    assert set(prune_2to4(Net(), layers=["head"])) == {"head.0", "head.2"}
    assert set(prune_2to4(Net(), layers=["head.*"], exclude=["head.2"])) == {"head.0"}
    assert set(prune_2to4(net, exclude=["pw"])) == {"head.0", "head.2"}
    with pytest.raises(kiln.KilnError, match="name no linear or 1x1 conv"):
        prune_2to4(Net(), layers=["k3"])


def test_summary_says_which_layers_qualify_and_why_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 60), nn.Linear(60, 32), nn.Linear(32, 32))
    prune_2to4(model, exclude=["3"])
    rows = {r.name: r for r in sparsity_summary(model).rows}
    assert rows["0"].qualifies and rows["0"].is_2to4 and rows["0"].reason is None
    assert rows["1"].is_2to4 and "outputs 60 not a multiple of 16" in rows["1"].reason
    assert rows["2"].is_2to4 and "reduction 60 not a multiple of 16" in rows["2"].reason
    assert not rows["3"].is_2to4 and rows["3"].dense_groups == 1.0 and "not 2:4" in rows["3"].reason
    assert sparsity_summary(model).qualifying == ["0"]
    text = str(sparsity_summary(model))
    assert "1 of 4" in text and "| 1 " in text


def test_summary_flags_strided_pointwise_convs_which_kiln_runs_as_convolutions():
    model = nn.Sequential(nn.Conv2d(32, 64, 1), nn.Conv2d(64, 64, 1, stride=2))
    prune_2to4(model)
    rows = {r.name: r for r in sparsity_summary(model).rows}
    assert rows["0"].qualifies
    assert rows["1"].is_2to4 and "stride (2, 2)" in rows["1"].reason


def test_kernel_shape_problem_follows_cusparselt_constraints():
    assert kernel_shape_problem(4096, 1024, torch.float16) is None
    assert kernel_shape_problem(16, 16, torch.bfloat16) is None
    assert "multiple of 16" in kernel_shape_problem(24, 32, torch.float16)
    assert "multiple of 32" in kernel_shape_problem(16, 64, torch.int8)
    assert "enable FP16 or BF16" in kernel_shape_problem(64, 64, torch.float32)
