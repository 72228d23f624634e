"""Graphs that carry their own quantization: QAT fake-quantize ops and PT2E quantize/dequantize pairs."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kiln


class FakeQuantNet(nn.Module):
    """Asymmetric uint8-range activations (zero point 7), symmetric per-channel weights, a residual and a matmul."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.register_buffer("w_scale", self.conv.weight.detach().abs().amax((1, 2, 3)) / 127)
        self.register_buffer("w_zero", torch.zeros(8, dtype=torch.int32))

    def forward(self, x):
        xq = torch.fake_quantize_per_tensor_affine(x, 0.03, 7, 0, 255)
        w = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale, self.w_zero, 0, -128, 127)
        y = F.relu(F.conv2d(xq, w, self.conv.bias, padding=1))
        t = y.mean((2, 3))
        tq = torch.fake_quantize_per_tensor_affine(t, 0.01, 0, -128, 127)
        fw = torch.fake_quantize_per_tensor_affine(self.fc.weight, 0.005, 0, -128, 127)
        return F.linear(tq, fw, self.fc.bias)


def _rel(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


def test_fake_quantize_graph_becomes_int8_layers_with_the_models_scales():
    model = FakeQuantNet().eval()
    x = torch.randn(2, 3, 6, 6)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.int8}, min_block_size=1, require_full_compilation=True)
    kinds = [row[1] for row in compiled.report.layers["_engine_block_0"]]
    assert kinds.count("qconv") == 1 and kinds.count("qlinear") == 1 and "fake_quantize" not in kinds, kinds
    with torch.no_grad():
        assert _rel(compiled(x), model(x)) < 1e-5
    # Without INT8 enabled the same graph runs its fake-quantize ops in float: the same numbers.
    fp32 = kiln.compile(model, [x], min_block_size=1)
    assert "fake_quantize" in [row[1] for row in fp32.report.layers["_engine_block_0"]]
    with torch.no_grad():
        assert _rel(fp32(x), model(x)) < 1e-6


def test_pt2e_quantize_dequantize_graph_compiles_to_int8():
    warnings.filterwarnings("ignore")
    pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    x86 = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = F.relu(self.conv1(x))
            y = F.relu(self.conv2(y))
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 6, 6)
    exported = torch.export.export(model, (x,), strict=False).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = pt2e.prepare_pt2e(exported, quantizer)
    for _ in range(4):
        prepared(torch.randn(2, 3, 6, 6))
    converted = pt2e.convert_pt2e(prepared)
    compiled = kiln.compile(converted, [x], enabled_precisions={torch.int8}, min_block_size=1)
    kinds = [row[1] for row in compiled.report.layers["_engine_block_0"]]
    assert kinds.count("qconv") == 2 and kinds.count("qlinear") == 1, kinds
    with torch.no_grad():
        assert _rel(compiled(x), converted(x)) < 1e-5
