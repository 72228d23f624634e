"""A small transformer encoder in INT8 and FP8: linear layers and both attention matmuls in 8 bits; softmax and norms stay float."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kiln


class EncoderLayer(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        attn = F.softmax(scores, dim=-1) @ v
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(EncoderLayer(), EncoderLayer())

    def forward(self, x):
        return self.layers(x)


def _data(n):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(4, 16, 32, generator=g) for _ in range(n)]


@pytest.mark.parametrize("precision, budget", [(torch.int8, 0.05), (torch.float8_e4m3fn, 0.05)])
def test_encoder_in_8_bits_stays_close_to_fp32(precision, budget):
    model = Encoder().eval()
    calibrator = kiln.ptq.DataLoaderCalibrator(_data(3), algo="percentile", progress=False)
    compiled = kiln.compile(
        model, [_data(1)[0]], enabled_precisions={precision}, calibrator=calibrator, int8_error_budget=budget, min_block_size=1
    )
    kinds = [row[1] for row in compiled.report.layers["_engine_block_0"]]
    assert kinds.count("qlinear") >= 6 and kinds.count("qmatmul") >= 2, kinds
    assert "softmax" in kinds and "norm" in kinds  # kept in float
    x = _data(4)[3]
    with torch.no_grad():
        out, ref = compiled(x), model(x)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < budget, f"{precision}: relative error {err:.4f}"
    rows = compiled.report.quantization["_engine_block_0"]["rows"]
    expected = "int8" if precision == torch.int8 else "fp8"
    assert any(r[2] == expected for r in rows)


def test_half_encoder_with_a_cast_attention_mask_calibrates():
    # The benchmark's BERT-base encoder failed on the H100: its `mask.to(x.dtype)` cast made an FP16 mask
    # inside the guard's FP32 yardstick run, and attention refused it beside FP32 queries.
    from benchmarks.models import TINY_ENCODER
    from benchmarks.models import Encoder as BertEncoder

    torch.manual_seed(0)
    model = BertEncoder(TINY_ENCODER).eval().half()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, TINY_ENCODER.vocab, (2, 16), generator=g), torch.ones(2, 16, dtype=torch.long)) for _ in range(2)]
    calibrator = kiln.ptq.DataLoaderCalibrator(batches, algo="minmax", progress=False)
    compiled = kiln.compile(model, list(batches[0]), enabled_precisions={torch.int8, torch.half}, calibrator=calibrator, min_block_size=1)
    kinds = [row[1] for row in compiled.report.layers["_engine_block_0"]]
    assert "qlinear" in kinds, kinds
    with torch.no_grad():
        out, ref = compiled(*batches[1]).float(), model(*batches[1]).float()
    assert ((out - ref).norm() / ref.norm()).item() < 0.1
