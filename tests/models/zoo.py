"""Small whole models in the shapes real networks have, with random weights and random BatchNorm statistics.

Each builder returns (model in eval mode, example inputs). Sizes are tiny so a CPU test run stays fast;
the structure (residuals, depthwise convs, squeeze-excite, attention) is what the tests exercise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BatchNorm layers are identities in eval mode; random statistics make BN folding matter."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def _ready(model: nn.Module, seed: int) -> nn.Module:
    return randomize_batch_norm(model, seed).eval()


# --- MLP -------------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, dims=(32, 64, 64, 10)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def mlp():
    torch.manual_seed(0)
    return MLP().eval(), (torch.randn(4, 32),)


# --- ResNet-style CNN ------------------------------------------------------------------------------


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNetish(nn.Module):
    def __init__(self, widths=(16, 32, 64), classes=10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, widths[0], 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnetish():
    torch.manual_seed(1)
    return _ready(ResNetish(), 1), (torch.randn(2, 3, 32, 32),)


# --- MobileNetV3-style block -----------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeezed, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class MobileNetV3Block(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3, squeeze-excite, 1x1 project, with hardswish."""

    def __init__(self, cin=16, expanded=64, cout=16, stride=1):
        super().__init__()
        self.expand = conv_bn(cin, expanded, 1)
        self.depthwise = conv_bn(expanded, expanded, 3, stride, groups=expanded)
        self.se = SqueezeExcite(expanded, expanded // 4)
        self.project = conv_bn(expanded, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.hardswish(self.expand(x))
        h = F.hardswish(self.depthwise(h))
        h = self.project(self.se(h))
        return x + h if self.residual else h


class MobileNetV3ish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.Hardswish())
        self.blocks = nn.Sequential(MobileNetV3Block(16, 64, 16), MobileNetV3Block(16, 48, 24, stride=2))
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def mobilenetv3ish():
    torch.manual_seed(2)
    return _ready(MobileNetV3ish(), 2), (torch.randn(2, 3, 32, 32),)


# --- EfficientNet-style MBConv stack ---------------------------------------------------------------


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand=4, stride=1):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid, 1) if expand != 1 else None
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid)
        self.se = SqueezeExcite(mid, max(1, cin // 4), act=nn.SiLU, gate=nn.Sigmoid)
        self.project = conv_bn(mid, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.silu(self.expand(x)) if self.expand is not None else x
        h = self.project(self.se(F.silu(self.depthwise(h))))
        return x + h if self.residual else h


class EfficientNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(16, 16, expand=1), MBConv(16, 24, stride=2), MBConv(24, 24), MBConv(24, 40, stride=2))
        self.head = nn.Sequential(conv_bn(40, 64, 1), nn.SiLU())
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def efficientnetish():
    torch.manual_seed(3)
    return _ready(EfficientNetish(), 3), (torch.randn(2, 3, 32, 32),)


# --- small ViT -------------------------------------------------------------------------------------


class SDPAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MHAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class EncoderBlock(nn.Module):
    def __init__(self, dim, heads, attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, image=32, patch=8, dim=32, depth=2, heads=4, classes=10, attention=SDPAttention):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, attention) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_sdpa():
    torch.manual_seed(4)
    return TinyViT().eval(), (torch.randn(2, 3, 32, 32),)


def vit_mha():
    torch.manual_seed(5)
    return TinyViT(attention=MHAttention).eval(), (torch.randn(2, 3, 32, 32),)


# --- a model with an op the engine does not have, and dict outputs ---------------------------------


class CumprodInTheMiddle(nn.Module):
    """Engine-friendly layers around torch.cumprod (no converter): the cumprod must fall back to PyTorch."""

    def __init__(self):
        super().__init__()
        self.encoder = MLP((16, 32, 32))
        self.decoder = MLP((32, 32, 8))

    def forward(self, x):
        h = self.encoder(x)
        running = torch.cumprod(h, dim=1)
        logits = self.decoder(running)
        return {"logits": logits, "extras": {"probs": torch.softmax(logits, dim=-1), "hidden": [h, running]}}


def cumprod_in_the_middle():
    torch.manual_seed(6)
    return CumprodInTheMiddle().eval(), (torch.randn(4, 16),)


PURE_MODELS = {
    "mlp": mlp,
    "resnetish": resnetish,
    "mobilenetv3ish": mobilenetv3ish,
    "efficientnetish": efficientnetish,
    "vit_sdpa": vit_sdpa,
    "vit_mha": vit_mha,
}
