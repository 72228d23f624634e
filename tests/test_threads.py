"""The CPU runtime called from many threads at once: every call returns its own input's answer."""

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

import kiln
from tests.helpers import FP32_RTOL, relative_error


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc((y + y.sigmoid()).mean((2, 3)))


def test_threads_calling_one_cpu_module_get_their_own_answers():
    torch.manual_seed(0)
    model = Net().eval()
    compiled = kiln.compile(model, [torch.randn(2, 3, 8, 8)], min_block_size=1)
    inputs = [[torch.randn(2, 3, 8, 8) for _ in range(10)] for _ in range(6)]
    with torch.no_grad():
        refs = [[model(x) for x in xs] for xs in inputs]

    def worker(i):
        with torch.no_grad():
            return [compiled(x) for x in inputs[i]]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(worker, range(6)))
    worst = max(relative_error(o, r) for outs, rs in zip(results, refs) for o, r in zip(outs, rs))
    assert worst < FP32_RTOL
