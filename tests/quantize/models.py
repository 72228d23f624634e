"""Small models for the quantization tests: a CNN and a QAT version of it written with torch's fake-quantize ops."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitsCNN(nn.Module):
    """8x8 digits → 10 classes: conv (plain and grouped), residual 1x1 conv, max-pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = F.relu(self.conv3(y) + y)
        y = F.max_pool2d(y, 2)
        return self.fc(y.flatten(1))


class FakeQuant(nn.Module):
    """Per-tensor int8 fake-quantization with a scale tracked from the running amax (as torch.ao's observers do)."""

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.amax = None

    def forward(self, x):
        if self.training:
            amax = x.detach().abs().max().item()
            self.amax = amax if self.amax is None else (1 - self.momentum) * self.amax + self.momentum * amax
        return torch.fake_quantize_per_tensor_affine(x, max(self.amax, 1e-8) / 127.0, 0, -128, 127)


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, w.dim()))
    scale = (w.detach().abs().amax(dim=dims) / 127.0).clamp_min(1e-8)
    return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(w.shape[0], dtype=torch.int32), 0, -127, 127)


class QATDigitsCNN(DigitsCNN):
    """DigitsCNN trained with fake-quantized activations and per-channel fake-quantized weights."""

    def __init__(self):
        super().__init__()
        self.fq = nn.ModuleList(FakeQuant() for _ in range(4))

    def forward(self, x):
        y = F.relu(F.conv2d(self.fq[0](x), fake_quant_weight(self.conv1.weight), self.conv1.bias, padding=1))
        y = F.relu(F.conv2d(self.fq[1](y), fake_quant_weight(self.conv2.weight), self.conv2.bias, padding=1, groups=2))
        y = F.relu(F.conv2d(self.fq[2](y), fake_quant_weight(self.conv3.weight), self.conv3.bias) + y)
        y = F.max_pool2d(y, 2)
        return F.linear(self.fq[3](y.flatten(1)), fake_quant_weight(self.fc.weight), self.fc.bias)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    # One thread: these steps are tiny, and on a shared CI machine extra threads only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def accuracy(fn, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * (fn(x).argmax(1) == y).float().mean().item()
