import pytest
import torch
import torch.nn.functional as F

import kiln
from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda, check_against_eager

X = torch.randn(5, 6, 8)

SLICES = {
    "start": lambda x: x[2:],
    "end": lambda x: x[:, :4],
    "both": lambda x: x[1:4, 2:5],
    "step": lambda x: x[:, ::2],
    "start_end_step": lambda x: x[1:5:3],
    "negative_start": lambda x: x[..., -3:],
    "negative_end": lambda x: x[:-1, 1:-1],
    "negative_both_step": lambda x: x[:, -5:-1:2],
    "past_the_end": lambda x: x[:, 3:100],
    "empty": lambda x: x[:, 4:2],
    "last_dim_step": lambda x: x[..., 1::3],
    "narrow": lambda x: x.narrow(2, 2, 4),
    "several_dims": lambda x: x[1:, ::2, -3:],
}


@pytest.mark.parametrize("name", sorted(SLICES))
def test_slice_matches_eager(name):
    compiled = check_against_eager(Lambda(SLICES[name]), X)
    assert "slice" in layer_kinds(compiled)


SELECTS = {
    "first": lambda x: x[0],
    "middle_dim": lambda x: x[:, 2],
    "negative_index": lambda x: x[-1],
    "negative_dim": lambda x: x.select(-1, 3),
    "select_then_slice": lambda x: x[:, 1, 2:],
}


@pytest.mark.parametrize("name", sorted(SELECTS))
def test_select_matches_eager(name):
    compiled = check_against_eager(Lambda(SELECTS[name]), X)
    assert "select" in layer_kinds(compiled)


INDEXING = {
    "index_select_const": (lambda x: x.index_select(1, torch.tensor([0, 2, 3, 2])), "index_select"),
    "index_select_input": (lambda x, i: x.index_select(2, i), "index_select"),
    "index_tensor_first": (lambda x, i: x[i % 5], "index_select"),
    "index_tensor_middle": (lambda x, i: x[:, i], "index_select"),
    "index_tensor_2d": (lambda x, i: x[:, i.view(2, 2)], "index_select"),
    "gather": (lambda x, i: x.gather(2, i.view(1, 1, 4).expand(5, 6, 4)), "gather"),
    "gather_dim0": (lambda x, i: x.gather(0, i.view(4, 1, 1).expand(4, 6, 8) % 5), "gather"),
    "roll": (lambda x, i: x.roll(2, 1), "index_select"),
}


@pytest.mark.parametrize("name", sorted(INDEXING))
def test_indexing_matches_eager(name):
    fn, kind = INDEXING[name]
    index = torch.tensor([3, 0, 5, 1])
    model = Lambda(fn) if fn.__code__.co_argcount == 2 else Lambda(lambda x, i: fn(x))
    compiled = check_against_eager(model, X, index)
    assert kind in layer_kinds(compiled)


def test_index_with_negative_indices_wraps_like_eager():
    check_against_eager(Lambda(lambda x, i: x[:, i]), X, torch.tensor([-1, 0, -6]))


@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_embedding_matches_eager(shape):
    table = torch.randn(10, 4)
    ids = torch.randint(0, 10, shape)
    compiled = check_against_eager(Lambda(lambda i, w: F.embedding(i, w, padding_idx=0), table), ids)
    assert "index_select" in layer_kinds(compiled)


def test_boolean_mask_indexing_falls_back_with_reason():
    # Several index tensors run on the engine (test_indexing.py); a mask's output size is data-dependent.
    x = torch.randn(4, 6)
    report = kiln.compile(Lambda(lambda x: x[x > 0]), [x], min_block_size=1, dryrun=True)
    assert any("boolean mask" in row.reason for row in report.rows), report.table()


def test_gather_on_a_scalar():
    check_against_eager(Lambda(lambda x, i: x.gather(-1, i)), torch.tensor(2.5), torch.tensor(0))
