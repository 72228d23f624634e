import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Lambda, check_against_eager

SOFTMAXES = {
    "softmax_last": lambda x: F.softmax(x, -1),
    "softmax_channels": lambda x: F.softmax(x, 1),
    "softmax_first": lambda x: torch.softmax(x, 0),
    "log_softmax_last": lambda x: F.log_softmax(x, -1),
    "log_softmax_channels": lambda x: F.log_softmax(x, 1),
    "softmax_from_half": lambda x: F.softmax(x.half(), -1, dtype=torch.float32),
    "log_softmax_from_half": lambda x: F.log_softmax(x.half(), 2, dtype=torch.float32),
    "internal_softmax": lambda x: torch.ops.aten._softmax(x, -1, False),
    "internal_log_softmax": lambda x: torch.ops.aten._log_softmax(x, 1, False),
    "internal_softmax_half_to_float": lambda x: torch.ops.aten._softmax(x.half(), -1, False).float(),
    "softmax_large_logits": lambda x: F.softmax(x * 100, -1),
}


@pytest.mark.parametrize("name", sorted(SOFTMAXES))
def test_softmax_matches_eager(name):
    compiled = check_against_eager(Lambda(SOFTMAXES[name]), torch.randn(2, 3, 5, 7))
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "softmax" in kinds
