"""One model over every compute layer kind: plans stay plain JSON, and a fresh executor re-runs them."""

import json

import torch
import torch.nn.functional as F

import kiln
from kiln.engine.plan import Plan
from kiln.engine.runtime import PlanExecutor
from tests.helpers import assert_outputs_match, check_against_eager


class _EveryComputeKind(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.ln = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        x = F.pad(self.conv(x), (1, 1, 1, 1), mode="reflect")
        x = F.max_pool2d(self.norm(self.up(x)), 3, 2, 1, ceil_mode=True)
        x = F.interpolate(F.avg_pool2d(x, 2, count_include_pad=False), scale_factor=1.5, mode="bilinear")
        tokens = self.ln(F.adaptive_avg_pool2d(x, (2, 3)).flatten(2).transpose(1, 2))
        tokens = F.scaled_dot_product_attention(tokens[:, None], tokens[:, None], tokens[:, None], is_causal=True)[:, 0]
        logits = F.log_softmax(self.fc(tokens), -1)
        feats = self.bn(x.mean((2, 3)))
        return logits.amax(1), torch.linalg.vector_norm(feats, float("inf"), -1)


def test_compute_layers_round_trip_through_json():
    model = _EveryComputeKind().eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = check_against_eager(model, x)
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert {"conv", "pad", "norm", "pool", "resize", "attention", "linear", "softmax", "reduce"} <= kinds
    ((_, engine),) = compiled.engine_blocks.items()
    text = json.dumps(engine.plan.to_json(), allow_nan=False)
    plan = Plan.from_json(json.loads(text), engine.plan.weights)
    inputs = [x]
    torch.testing.assert_close(PlanExecutor(plan).run(inputs), engine.executor.run(inputs))


class _SizesFromDynamicDims(torch.nn.Module):
    def forward(self, x):
        y = F.pad(x, (0, x.shape[-1] // 2))
        y = F.interpolate(y, size=(x.shape[-2] * 2, x.shape[-1]), mode="bilinear")
        y = F.adaptive_avg_pool2d(F.max_pool2d(y, 2, ceil_mode=True), (3, 3)) + y.amax((2, 3), keepdim=True)
        return F.softmax(y, -1), F.scaled_dot_product_attention(y, y, y, is_causal=True)


def test_symbolic_pad_and_resize_sizes_follow_the_input():
    model = _SizesFromDynamicDims()
    spec = kiln.Input(min_shape=(1, 3, 4, 4), opt_shape=(2, 3, 6, 6), max_shape=(4, 3, 16, 16))
    compiled = kiln.compile(model, [spec], min_block_size=1, require_full_compilation=True)
    for shape in [(1, 3, 4, 4), (3, 3, 7, 9), (4, 3, 16, 16)]:
        x = torch.randn(shape)
        assert_outputs_match(compiled(x), model(x))
