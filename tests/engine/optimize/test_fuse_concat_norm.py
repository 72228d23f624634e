"""DenseNet-style graphs: an inference BatchNorm no fold takes becomes per-channel FP32 arithmetic
(optimize/batch_norm_affine.py), and the concat before it joins the pointwise group that reads it, its pieces
read in place by the generated kernel (optimize/fuse_pointwise.py); the plans give eager's outputs with the
reference tactics and with the generated kernels (Triton's interpreter on a CPU)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kiln.engine.plan import Step
from kiln.engine.runtime import PlanExecutor
from tests.helpers import network_as_cuda_build, optimized_for_cuda, relative_error

try:
    import triton
except ImportError:
    triton = None


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(2 * growth), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = self.conv1(F.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    """timm's DenseNet in small: every dense layer normalises the concat of all earlier feature maps."""

    def __init__(self, cin: int = 8, growth: int = 4, layers: int = 3, head: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, cin, 3, padding=1)
        self.layers = nn.ModuleList([DenseLayer(cin + i * growth, growth) for i in range(layers)])
        self.norm = nn.BatchNorm2d(cin + layers * growth)
        self.fc = nn.Linear(cin + layers * growth, 5) if head else None
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics far from the identity, so a wrong channel shows
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        y = F.relu(self.norm(torch.cat(features, 1)))
        return self.fc(y.mean((2, 3))) if self.fc is not None else y


class TwoReaders(nn.Module):
    """A concat read by its norm and by a conv: it is written anyway, so it stays a concat."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.norm, self.conv = nn.BatchNorm2d(10), nn.Conv2d(10, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        return F.relu(self.norm(y)) + self.conv(y).sum(1, keepdim=True)


def kinds(network) -> list[str]:
    return [m.kind for m in network.layers]


def test_dense_block_becomes_one_generated_group_per_dense_layer():
    torch.manual_seed(0)
    model, x = DenseBlock().eval(), torch.randn(2, 3, 6, 6)
    before, _ = network_as_cuda_build(model, [x], without=("batch_norm_as_affine",))
    after, _ = network_as_cuda_build(model, [x])
    # 24 layers unfused: input cast, stem conv, 3 x (concat (the first of one piece: a copy), norm, relu, conv, relu,
    # conv), the final concat, norm, relu and output cast. Conv epilogues took the convs' ReLUs and only the last
    # ReLU + cast made a group: 20. Now each norm, its ReLU and the concat before it are one group: 12.
    assert before.kernels_unfused == after.kernels_unfused == 24
    assert kinds(before).count("concat") == 3 and kinds(before).count("norm") == 4
    assert len(before.layers) == 20, kinds(before)
    assert "concat" not in kinds(after) and "norm" not in kinds(after), kinds(after)
    assert kinds(after).count("fused_pointwise") == 4 and len(after.layers) == 12, kinds(after)
    joined = [m for m in after.layers if m.kind == "fused_pointwise" and "concat:" in m.attrs["fused_ops"]]
    assert [len(m.inputs) - 2 for m in joined] == [2, 3, 4]  # pieces, then the norm's scale and shift


@pytest.mark.skipif(triton is None or torch.cuda.is_available(), reason="needs Triton's interpreter (no GPU)")
@pytest.mark.parametrize("head", [False, True], ids=["block", "with_head"])
def test_dense_block_plan_matches_eager_with_reference_and_generated_tactics(head):
    torch.manual_seed(0)
    model, x = DenseBlock(head=head).eval(), torch.randn(2, 3, 6, 6)
    network, plan = optimized_for_cuda(model, [x])
    assert "concat" not in kinds(network) and "norm" not in kinds(network)
    with torch.no_grad():
        eager = model(x)
    values = [x.half().contiguous(memory_format=torch.channels_last)]
    (reference,) = PlanExecutor(plan).run(values, torch.zeros(plan.arena.size, dtype=torch.uint8))
    assert relative_error(reference.float(), eager) < 1e-2
    plan.steps = [Step(s.layer, "triton_generated") if s.layer.kind == "fused_pointwise" else s for s in plan.steps]
    (generated,) = PlanExecutor(plan).run(values, torch.zeros(plan.arena.size, dtype=torch.uint8))
    assert relative_error(generated.float(), reference.float()) < 2e-3


def test_a_concat_read_elsewhere_is_left_alone_and_its_norm_still_fuses():
    torch.manual_seed(0)
    model, x = TwoReaders().eval(), torch.randn(2, 3, 5, 5)
    network, _ = network_as_cuda_build(model, [x])
    assert kinds(network).count("concat") == 1 and "norm" not in kinds(network), kinds(network)
    (concat,) = [m for m in network.layers if m.kind == "concat"]
    groups = [m for m in network.layers if m.kind == "fused_pointwise"]
    assert all(concat.outputs[0] not in m.inputs or "concat:" not in m.attrs["fused_ops"] for m in groups)
    assert any("binary:mul" in m.attrs["fused_ops"] and concat.outputs[0] in m.inputs for m in groups)


def test_without_the_passes_the_norm_and_concat_run_as_before():
    torch.manual_seed(0)
    model, x = DenseBlock().eval(), torch.randn(2, 3, 6, 6)
    network, _ = network_as_cuda_build(model, [x], without=("batch_norm_as_affine",))
    assert kinds(network).count("norm") == 4 and kinds(network).count("concat") == 3
