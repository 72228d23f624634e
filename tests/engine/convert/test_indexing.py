import pytest
import torch

from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda, check_against_eager

aten = torch.ops.aten
X = torch.randn(5, 6, 7)
IDX = torch.tensor([0, 3, 4, 1])
J = torch.tensor([5, 0, 2, 2])
K = torch.tensor([6, 1, 0, 3])

CASES = {
    "index_two_leading": (lambda x, i, j, k: x[i, j], "index"),
    "index_two_apart": (lambda x, i, j, k: x[i, :, k], "index"),
    "index_three": (lambda x, i, j, k: x[i, j, k], "index"),
    "index_two_trailing": (lambda x, i, j, k: x[:, j, k], "index"),
    "index_broadcast": (lambda x, i, j, k: x[i.view(4, 1), j.view(1, 4)], "index"),
    "index_put": (lambda x, i, j, k: aten.index_put.default(x, [i, j], torch.ones(4, 7)), "index_put"),
    "index_put_accumulate": (lambda x, i, j, k: aten.index_put.default(x, [None, j], torch.ones(5, 4, 7), True), "index_put"),
    "index_put_scalar_broadcast": (lambda x, i, j, k: aten.index_put.default(x, [i, j, k], torch.tensor(2.5)), "index_put"),
    "setitem": (lambda x, i, j, k: _setitem(x, i), "index_put"),
    "scatter_value": (lambda x, i, j, k: torch.scatter(x, 2, k.view(1, 1, 4).expand(5, 6, 4), 1.5), "scatter"),
    "scatter_src": (lambda x, i, j, k: torch.scatter(x, 1, j.view(1, 4, 1).expand(5, 4, 7), -x[:, :4]), "scatter"),
    "slice_scatter": (lambda x, i, j, k: torch.slice_scatter(x, torch.zeros(5, 2, 7), 1, 1, 5, 2), "slice_scatter"),
    "slice_scatter_end": (lambda x, i, j, k: torch.slice_scatter(x, torch.ones(5, 6, 3), 2, 4), "slice_scatter"),
    "diagonal": (lambda x, i, j, k: torch.diagonal(x, 0, 1, 2) * 2, "diagonal"),
    "diagonal_offset": (lambda x, i, j, k: torch.diagonal(x, -2, 2, 0) * 2, "diagonal"),
    "as_strided": (lambda x, i, j, k: torch.as_strided(x * 2, (3, 4), (7, 2), 3), "as_strided"),
    "cumsum": (lambda x, i, j, k: torch.cumsum(x, 1), "cumsum"),
    "cumsum_int": (lambda x, i, j, k: torch.cumsum(i, 0), "cumsum"),
    "cumsum_dtype": (lambda x, i, j, k: torch.cumsum(x, -1, dtype=torch.float16), "cumsum"),
    "sort": (lambda x, i, j, k: torch.sort(x, 1), "sort"),
    "sort_descending_stable": (lambda x, i, j, k: torch.sort(x, dim=-1, descending=True, stable=True), "sort"),
    "topk": (lambda x, i, j, k: torch.topk(x, 3, 2), "topk"),
    "topk_smallest": (lambda x, i, j, k: torch.topk(x, 2, 0, largest=False), "topk"),
}


def _setitem(x, i):
    y = x * 1
    y[i] = 0.5
    return y


@pytest.mark.parametrize("name", sorted(CASES))
def test_indexing_and_scan_ops_match_eager(name):
    fn, kind = CASES[name]
    compiled = check_against_eager(Lambda(fn), X, IDX, J, K)
    assert kind in layer_kinds(compiled)


def test_boolean_mask_stays_in_pytorch_with_the_reason():
    import kiln

    model = Lambda(lambda x: x[x > 0] * 2).eval()
    compiled = kiln.compile(model, [X], min_block_size=1)
    reasons = {r.op: r.reason for r in compiled.report.rows if r.where == "pytorch"}
    assert any("data-dependent" in r for r in reasons.values()), compiled.report.table()
    assert torch.equal(compiled(X), model(X))
