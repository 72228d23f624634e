"""Aliasing prims (torch.ops.prims.broadcast_in_dim & co.) are captured as aten views and match eager."""

import pytest
import torch

import kiln
from kiln.capture.aliasing_prims import ALIASING_PRIM_REWRITES
from tests.helpers import Lambda, assert_outputs_match, check_against_eager

prims = torch.ops.prims
pytestmark = pytest.mark.filterwarnings("ignore:kiln.compile. the module is in training mode")

# name: (function of x, x's shape); each adds 1 so the view is not the graph's output itself.
CASES = {
    "broadcast_in_dim_new_last_dim": (lambda x: prims.broadcast_in_dim(x, [2, 3, 4], [0, 1]) + 1, (2, 3)),
    "broadcast_in_dim_new_middle_dims": (lambda x: prims.broadcast_in_dim(x, [2, 5, 6, 3], [0, 3]) * 2, (2, 3)),
    "broadcast_in_dim_expands_size_one": (lambda x: prims.broadcast_in_dim(x, [4, 2, 3], [1, 2]) - 1, (1, 3)),
    "broadcast_in_dim_same_rank": (lambda x: prims.broadcast_in_dim(x, [5, 3], [0, 1]) + 1, (1, 3)),
    "squeeze": (lambda x: prims.squeeze(x, [0, 2]) + 1, (1, 3, 1, 4)),
    "transpose": (lambda x: prims.transpose(x, [2, 0, 1]) + 1, (2, 3, 4)),
    "collapse_view": (lambda x: prims.collapse_view(x, 1, 3) + 1, (2, 3, 4, 5)),
    "collapse_view_two_dims": (lambda x: prims.collapse_view(x, 1, 2) + 1, (2, 3, 4)),
    "collapse_view_one_dim": (lambda x: prims.collapse_view(x, 1, 1) + 1, (2, 3, 4)),
    "split_dim": (lambda x: prims.split_dim(x, 1, 3) + 1, (2, 12)),
    "view_of": (lambda x: prims.view_of(x) + 1, (2, 3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_aliasing_prim_runs_on_the_engine_and_matches_eager(name):
    fn, shape = CASES[name]
    torch.manual_seed(0)
    compiled = check_against_eager(Lambda(fn), torch.randn(shape))
    assert len(compiled.report.blocks) == 1


def test_every_registered_rewrite_has_a_case():
    names = {op._schema.name.split("::")[1] for op in ALIASING_PRIM_REWRITES}
    assert names and all(any(case.startswith(name) for case in CASES) for name in names)


def test_broadcast_in_dim_over_a_dynamic_batch():
    model = Lambda(lambda x: prims.broadcast_in_dim(x, [x.shape[0], 3, 4], [0, 1]) + 1)
    spec = kiln.Input(min_shape=(2, 3), opt_shape=(4, 3), max_shape=(8, 3))
    compiled = kiln.compile(model, [spec], min_block_size=1, require_full_compilation=True)
    for batch in (2, 5, 8):
        x = torch.randn(batch, 3)
        assert_outputs_match(compiled(x), model(x))


def test_broadcast_in_dim_inside_a_model_with_weights():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):
            bias = prims.broadcast_in_dim(self.fc.bias, [x.shape[0], 4], [1])
            return torch.relu(x @ self.fc.weight.t() + bias)

    torch.manual_seed(0)
    check_against_eager(Head(), torch.randn(5, 3))


def test_an_aliasing_prim_without_a_rewrite_is_a_clear_capture_error():
    model = Lambda(lambda x: prims.view_of_dtype(x, torch.int32) + 1)
    with pytest.raises(kiln.CaptureError, match="aliases its input.*aliasing_prims.py"):
        kiln.compile(model, [torch.randn(2, 3)])
