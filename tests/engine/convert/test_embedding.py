import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Lambda, check_against_eager


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("shape", [(7,), (2, 5), (2, 3, 4)])
def test_embedding_matches_eager(shape, index_dtype):
    table = torch.randn(11, 6)
    indices = torch.randint(0, 11, shape, dtype=index_dtype)
    check_against_eager(Lambda(lambda i, w: F.embedding(i, w), table), indices)


def test_embedding_module_with_padding_idx_then_linear():
    model = torch.nn.Sequential(torch.nn.Embedding(11, 6, padding_idx=0), torch.nn.Linear(6, 3))
    check_against_eager(model, torch.tensor([[0, 3, 10], [4, 0, 1]]))
