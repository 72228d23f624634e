"""keep_masks holds the 2:4 masks through fine-tuning, and lets go when removed."""

import pytest
import torch
from torch import nn

import kiln
from kiln.sparsity import is_2to4, keep_masks, prune_2to4


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _train_steps(model, steps, check=None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        x, y = torch.randn(4, 16), torch.randn(4, 8)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if check is not None:
            check()
        opt.step()


def test_masks_hold_through_optimizer_steps_and_gradients_of_pruned_weights_are_zero():
    model = _model()
    masks = prune_2to4(model)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in masks}

    def pruned_gradients_are_zero():
        for name, mask in masks.items():
            assert not model.get_submodule(name).weight.grad[~mask].any()

    with keep_masks(model, masks):
        _train_steps(model, 5, pruned_gradients_are_zero)
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        assert is_2to4(weight)
        assert not weight[~mask].any()
        assert not torch.equal(weight, before[name])  # the kept weights did train


def test_without_keep_masks_training_fills_the_pruned_weights_back_in():
    # The control for the test above: AdamW's update reaches every weight unless the masks are kept.
    model = _model()
    prune_2to4(model)
    _train_steps(model, 2)
    assert not is_2to4(model[0].weight)


def test_remove_applies_the_masks_one_last_time_and_unhooks():
    model = _model()
    masks = prune_2to4(model)
    keeper = keep_masks(model, masks)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # e.g. an optimizer step after the last forward
    keeper.remove()
    assert is_2to4(model[0].weight)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(2, 16))
    assert not is_2to4(model[0].weight)  # no hook left to re-apply the mask


def test_keep_masks_rejects_masks_of_another_model():
    model = _model()
    with pytest.raises(kiln.KilnError, match="not modules of this model"):
        keep_masks(model, {"encoder.up": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(kiln.KilnError, match="has shape"):
        keep_masks(model, {"0": torch.ones(2, 2, dtype=torch.bool)})
