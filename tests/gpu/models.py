"""Small models that exercise the GPU runtime: conv chains with residuals and squeeze-excite, an MLP, attention."""

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-SiLU stem, a depthwise MBConv-like block with squeeze-excite and a residual add, pooled head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x)
        s = y.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(s))))
        y = self.project(y * s)
        x = torch.relu(x + y)
        return self.head(x.mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: 7x7 depthwise, LayerNorm over channels (NHWC), GELU MLP, layer scale, residual.

    Two spellings of the tail: the layer scale before the permute back to NCHW, or (timm's, `timm_order`)
    after it, where only sinking the permute lets the fc2 GEMM take the scale and residual as its epilogue."""

    def __init__(self, dim=64, timm_order=False):
        super().__init__()
        self.timm_order = timm_order
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        y = self.fc2(F.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        if self.timm_order:
            return x + y.permute(0, 3, 1, 2).mul(self.gamma.reshape(1, -1, 1, 1))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ExpSum(nn.Module):
    """A layer whose FP16 result would overflow: exp(12) = 162755 > 65504, so exp and the sum must stay FP32."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 32)

    def forward(self, x):
        return torch.exp(self.fc(x) + 12.0).sum(-1)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 256), nn.Linear(256, 256), nn.Linear(256, 8)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class TinyAttention(nn.Module):
    """One pre-norm transformer block over (batch, tokens, 64)."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ShiftedWindowAttention(nn.Module):
    """Swin's shifted-window attention block on a [B, H, W, C] map: roll, window partition, attention, reverse, roll back."""

    def __init__(self, dim=64, window=4, shift=2, heads=2):
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.norm = nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, h, w, c = x.shape
        n, s = self.window, self.shift
        y = torch.roll(self.norm(x), (-s, -s), (1, 2))
        y = y.view(b, h // n, n, w // n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n * n, c)
        q, k, v = self.qkv(y).reshape(-1, n * n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        y = self.proj((attn @ v).transpose(1, 2).reshape(-1, n * n, c))
        y = y.view(b, h // n, w // n, n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return x + torch.roll(y, (s, s), (1, 2))


def init_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so folding them is actually tested."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()
