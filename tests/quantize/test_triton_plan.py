"""The Triton 8-bit tactics swapped into whole compiled plans (in Triton's interpreter) give the reference's outputs.

On a CPU the builder picks reference tactics; this puts the GPU's choices in their place, with
the weights each one's prepare lays out, and runs the plans: every kernel, layout hand-over
(NHWC int8 between convs, requantized outputs) and epilogue in one network.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kiln
from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.registry import get_tactic
from kiln.engine.kernels.triton_epilogue import triton
from kiln.engine.plan import Step
from kiln.engine.runtime import PlanExecutor
from tests.helpers import plan_steps
from tests.quantize.test_transformer import Encoder

pytestmark = pytest.mark.skipif(triton is None, reason="needs Triton")


class MBConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.dw = nn.Conv2d(32, 32, 3, 1, 1, groups=32)
        self.project = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = F.relu(self.stem(x))
        z = F.silu(self.dw(y))
        y = F.relu(self.project(z) + y)
        return self.fc(y.mean((2, 3)))


def gpu_choice(layer: Layer) -> str | None:
    """A Triton tactic for this 8-bit layer, as the builder could choose on a GPU (smallest tiles)."""
    a = layer.attrs
    if layer.kind == "quantize":
        return "triton_quantize"
    if layer.kind in ("qlinear", "qmatmul"):
        return "triton_int8_gemm_kmajor_64x64x64"
    if layer.kind == "qconv":
        if a["depthwise"]:
            return "triton_int8_depthwise_16x256"
        pointwise = a["kernel_size"] == [1, 1] and a["stride"] == [1, 1] and a["padding"] == [0, 0] and a["groups"] == 1
        return "triton_int8_gemm_kmajor_64x64x64" if pointwise else "triton_int8_conv_kmajor_64x64x64" if a["groups"] == 1 else None
    return None


def swap_in_triton(compiled) -> list[str]:
    chosen = []
    for engine in compiled.engine_blocks.values():
        plan = engine.plan
        steps = []
        for step in plan.steps:
            name = gpu_choice(step.layer)
            if name is None:
                steps.append(step)
                continue
            tactic = get_tactic(step.layer.kind, name)
            layer = step.layer
            if tactic.prepare is not None:
                w = layer.inputs[1]
                plan.weights[f"{w}__{name}"] = tactic.prepare(layer, {w: plan.weights[w]})[w]
                inputs = [f"{w}__{name}" if n == w else n for n in layer.inputs]
                layer = Layer(layer.kind, layer.name, inputs, layer.outputs, layer.attrs, layer.precision, layer.source)
            steps.append(Step(layer, name))
            chosen.append(name)
        plan.steps = steps
        engine.executor = PlanExecutor(plan)
    return chosen


@pytest.mark.parametrize("model, shape", [(MBConvNet, (2, 3, 12, 12)), (Encoder, (2, 16, 32))], ids=["mbconv", "encoder"])
def test_triton_tactics_in_a_whole_plan_match_the_reference(model, shape):
    model = model().eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(shape, generator=g) for _ in range(3)]
    calibrator = kiln.ptq.DataLoaderCalibrator(data, algo="minmax", progress=False)
    compiled = kiln.compile(
        model, [data[0]], enabled_precisions={torch.int8}, calibrator=calibrator, int8_error_budget=10.0, min_block_size=1
    )
    x = data[1]
    reference = compiled(x)
    if model is MBConvNet:
        # The stem's output feeds the depthwise conv (quantized) and project's residual add: it stays INT8,
        # and project dequantizes it in its epilogue.
        steps = {s.layer.name: s.layer for s in plan_steps(compiled)}
        readers = [layer for layer in steps.values() if "res_scale" in layer.attrs]
        assert len(readers) == 1 and readers[0].attrs["residual"]
        assert compiled.engine_blocks["_engine_block_0"].plan.tensors[readers[0].inputs[3]].dtype == torch.int8
    chosen = swap_in_triton(compiled)
    assert "triton_quantize" in chosen and any("gemm" in c for c in chosen)
    assert torch.equal(compiled(x), reference)


def test_on_a_gpu_a_few_channel_stem_stays_in_float_and_the_report_says_why():
    import dataclasses

    from kiln.quantize.block import faster_in_float

    net = Network()
    x = net.add_input("x", [2, 3, 8, 8], torch.float32)
    w = net.add_constant("w", torch.randn(16, 3, 3, 3))
    attrs = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0], "groups": 1}
    (y,) = net.add_layer("conv", [x, w, None], [([2, 16, 8, 8], torch.float32)], attrs)
    w2 = net.add_constant("w2", torch.randn(16, 16, 3, 3))
    (z,) = net.add_layer("conv", [y, w2, None], [([2, 16, 8, 8], torch.float32)], attrs)
    net.outputs.append(z.name)
    settings = kiln.settings.CompileSettings()
    assert faster_in_float(net, settings) == {}  # the CPU's reference tactics: nothing to gain by keeping it
    on_gpu = faster_in_float(net, dataclasses.replace(settings, device=torch.device("cuda")))
    assert list(on_gpu) == ["conv"] and "3 input channels" in on_gpu["conv"]
