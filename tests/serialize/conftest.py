import pytest
import torch

import kiln


class MixedModel(torch.nn.Module):
    """Engine blocks, a PyTorch fallback op (cumprod), a fallback constant, and nested dict outputs."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 8)
        self.register_buffer("offset", torch.randn(8))

    def forward(self, x, scale):
        h = torch.relu(self.fc1(x))
        h = self.fc2(h) * scale
        c = torch.cumprod(h, dim=1) + self.offset
        return {"sum": c, "parts": [torch.sigmoid(c), (h > 0)]}


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    model = MixedModel().eval()
    x, scale = torch.randn(2, 8), torch.rand(2, 8)
    compiled = kiln.compile(model, [x, scale], min_block_size=1, torch_executed_ops=["aten.add.Tensor"])
    return model, compiled, (x, scale)


@pytest.fixture(scope="module")
def mixed_bytes(mixed):
    from kiln.serialize import to_bytes

    return to_bytes(mixed[1])
