"""scatter_reduce.two (every reduction, with and without the input's own values) on the engine, against eager."""

import pytest
import torch

from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda, check_against_eager

X = torch.randn(5, 6, 7)
# Repeated indices, so each reduction really combines several source values into one element.
INDEX = torch.tensor([[0, 2, 2, 5], [1, 1, 1, 0], [4, 3, 4, 3], [5, 0, 5, 0], [2, 2, 2, 2]]).view(5, 4, 1).expand(5, 4, 7)


@pytest.mark.parametrize("include_self", [True, False], ids=["include_self", "exclude_self"])
@pytest.mark.parametrize("reduce", ["sum", "prod", "mean", "amax", "amin"])
def test_scatter_reduce_matches_eager(reduce, include_self):
    model = Lambda(lambda x, index: torch.scatter_reduce(x, 1, index, -x[:, :4] * 2, reduce, include_self=include_self))
    compiled = check_against_eager(model, X, INDEX.contiguous())
    assert "scatter" in layer_kinds(compiled)
