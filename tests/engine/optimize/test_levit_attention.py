"""LeViT's attention, written as timm writes it (non-conv mode), becomes `attention` layers the fused Triton kernel
takes: q/k head dim 16, v head dim 32 (Attention) or 64 (AttentionSubsample, whose queries come from every other
token of the grid), a learned bias per head indexed by relative position. The layers are offered the Triton tactics
on a CUDA build, and the plan run on each of them (Triton's interpreter without a GPU) matches eager."""

import pytest
import torch
from torch import nn

from kiln.engine.kernels.registry import BuildTarget, tactics_for
from kiln.engine.kernels.triton_attention import CONFIGS, triton
from kiln.engine.optimize.fuse_attention import fuse_attention_layers
from tests.engine.optimize.test_fuse_attention import converted, run_plan
from tests.helpers import relative_error


class LevitAttention(nn.Module):
    """timm's levit.Attention (stride 1) and levit.AttentionSubsample (stride 2), their linears without the BN."""

    def __init__(self, dim: int, key_dim: int, heads: int, attn_ratio: float, resolution: int, stride: int = 1):
        super().__init__()
        self.heads, self.key_dim, self.val_dim, self.stride, self.resolution = heads, key_dim, int(attn_ratio * key_dim), stride, resolution
        self.scale = key_dim**-0.5
        if stride == 1:
            self.qkv = nn.Linear(dim, heads * (2 * key_dim + self.val_dim))
        else:
            self.kv = nn.Linear(dim, heads * (key_dim + self.val_dim))
            self.q = nn.Linear(dim, heads * key_dim)
        keys = torch.stack(torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")).flatten(1)
        grid = torch.arange(0, resolution, stride)
        queries = torch.stack(torch.meshgrid(grid, grid, indexing="ij")).flatten(1)
        offset = (queries[..., :, None] - keys[..., None, :]).abs()
        self.register_buffer("bias_idxs", offset[0] * resolution + offset[1], persistent=False)
        self.attention_biases = nn.Parameter(torch.randn(heads, resolution**2))

    def forward(self, x):
        b, n, c = x.shape
        if self.stride == 1:
            q, k, v = self.qkv(x).view(b, n, self.heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
            q = q.permute(0, 2, 1, 3)
        else:
            k, v = self.kv(x).view(b, n, self.heads, -1).split([self.key_dim, self.val_dim], dim=3)
            r = self.resolution
            sub = x.view(b, r, r, c)[:, :: self.stride, :: self.stride].reshape(b, -1, c)
            q = self.q(sub).view(b, sub.shape[1], self.heads, self.key_dim).permute(0, 2, 1, 3)
        k = k.permute(0, 2, 3, 1)
        v = v.permute(0, 2, 1, 3)
        attn = q @ k * self.scale + self.attention_biases[:, self.bias_idxs]
        attn = attn.softmax(dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, -1, self.heads * self.val_dim)


class LevitStage(nn.Module):
    """An attention over a 7x7 grid (49 tokens, v head dim 32), then a subsampling one (16 queries over 49 keys, v 64)."""

    def __init__(self):
        super().__init__()
        self.attention = LevitAttention(32, 16, 2, 2.0, 7)
        self.subsample = LevitAttention(64, 16, 4, 4.0, 7, stride=2)
        self.mix = nn.Linear(96, 64)

    def forward(self, x):
        x = torch.cat([x, self.attention(x)], dim=-1)
        return self.subsample(self.mix(x))


CUDA_BUILD = BuildTarget(torch.device("cuda"), torch.float16)


def test_levit_attention_becomes_attention_layers_with_unequal_head_dims():
    torch.manual_seed(0)
    model = LevitStage().eval()
    network, _ = converted(model, [torch.randn(2, 49, 32)])
    fused = fuse_attention_layers(network)
    layers = [m for m in fused.layers if m.kind == "attention"]
    assert len(layers) == 2 and "softmax" not in [m.kind for m in fused.layers]
    shapes = [[list(fused.tensors[n].shape) for n in m.inputs] for m in layers]
    # q, k, v, bias: 49 queries and keys with v head dim 32, then 16 queries over 49 keys with v head dim 64.
    assert shapes[0] == [[2, 2, 49, 16], [2, 2, 49, 16], [2, 2, 49, 32], [1, 2, 49, 49]]
    assert shapes[1] == [[2, 4, 16, 16], [2, 4, 49, 16], [2, 4, 49, 64], [1, 4, 16, 49]]
    for layer in layers:
        assert set(CONFIGS) <= {t.name for t in tactics_for(layer, CUDA_BUILD)}


@pytest.mark.skipif(triton is None, reason="Triton is not installed")
@pytest.mark.parametrize("tactic", ["triton_attention", "triton_attention_16x64"])
def test_levit_attention_on_the_triton_kernel_matches_eager(tactic):
    torch.manual_seed(1)
    model = LevitStage().eval()
    x = torch.randn(2, 49, 32)
    with torch.no_grad():
        eager = model(x)
    network, settings = converted(model.half(), [x.half()], half=True)
    fused = fuse_attention_layers(network)
    (got,) = run_plan(fused, settings, [x.half()], tactic)
    assert got.dtype == torch.half and relative_error(got.float(), eager) < 1e-2
