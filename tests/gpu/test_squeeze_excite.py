"""Squeeze-excite gates on the GPU: the generated gate kernel against the reference at EfficientNet sizes, and SE
networks (a small SE block in four spellings, timm's EfficientNet-B0 and MobileNetV3) compiled and against eager,
with the fused `squeeze_excite` layer in the plan and its one-kernel configs timed by the builder.

Run with -s to see, per gate, the tactic the builder kept and the times it measured."""

import pytest
import torch

import kiln
from kiln.engine.kernels.registry import BuildTarget, RunContext, tactics_for
from kiln.engine.kernels.squeeze_excite import squeeze_excite_reference
from kiln.engine.kernels.triton_squeeze_excite import CONFIGS
from tests.engine.kernels.test_triton_squeeze_excite import CASES, MEAN, POOL, conv_stage, gate
from tests.engine.optimize.test_fuse_squeeze_excite import SEBlock
from tests.helpers import plan_steps, relative_error

CUDA = torch.device("cuda")


def _gate_steps(compiled):
    return plan_steps(compiled, "squeeze_excite")


def _check_gates(compiled, expected_count):
    steps = _gate_steps(compiled)
    assert len(steps) == expected_count, [s.layer.kind for s in plan_steps(compiled)]
    for s in steps:
        timed = set(s.timings) | {s.tactic}
        assert set(CONFIGS) & timed, f"no one-kernel gate config was timed for {s.layer.name}: {timed}"
        shown = ", ".join(f"{k} {v * 1000:.1f}us" for k, v in sorted(s.timings.items(), key=lambda kv: kv[1]))
        print(f"{s.layer.name}: kept {s.tactic} ({shown})")
    return steps


@pytest.mark.parametrize("style", ["timm", "mobilenet", "written_out", "linear"])
@pytest.mark.parametrize("batch", [1, 8])
def test_se_block_fuses_and_matches_eager(style, batch):
    torch.manual_seed(0)
    model = SEBlock(c=96, hidden=24, style=style).eval().to(CUDA)
    x = torch.randn(batch, 96, 28, 28, device=CUDA).contiguous(memory_format=torch.channels_last)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    with torch.no_grad():
        for inputs in (x, torch.randn_like(x)):
            assert relative_error(compiled(inputs), model(inputs)) < 2e-2
    _check_gates(compiled, 1)


@pytest.mark.parametrize("name,batches", [("efficientnet_b0", (1, 8)), ("mobilenetv3_large_100", (1,))])
def test_timm_se_networks_fuse_every_gate_and_match_eager(name, batches):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().to(CUDA)
    gates = {"efficientnet_b0": 16, "mobilenetv3_large_100": 8}[name]
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, device=CUDA)
        compiled = kiln.compile(model, [x], enabled_precisions={torch.half})
        with torch.no_grad():
            # ~80 layers of FP16 against the FP32 model (tests/gpu/test_precision.py's bound).
            assert relative_error(compiled(x), model(x)) < 2e-2
        _check_gates(compiled, gates)


# EfficientNet-B0's gates at batch 1 and 128: the widest spatial mean, a middle one, the widest channel count.
MODEL_SIZES = [(1, 32, 8, 112), (128, 32, 8, 112), (1, 672, 28, 14), (128, 672, 28, 14), (1, 1152, 48, 7), (128, 1152, 48, 7)]


@pytest.mark.parametrize("n,c,hidden,hw", MODEL_SIZES)
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_gate_tactics_against_the_reference_at_model_sizes(n, c, hidden, hw, layout):
    stages = [conv_stage("silu"), conv_stage("sigmoid")]
    layer, inputs = gate(MEAN if hw % 2 else POOL, stages, c, hidden, (n, hw, hw), layout)
    inputs = [t.to(CUDA) if t is not None else None for t in inputs]
    run = RunContext({})
    ref = squeeze_excite_reference(layer, [t.float() if t is not None else None for t in inputs], run)
    for t in tactics_for(layer, BuildTarget(CUDA, torch.float16)):
        out = t.fn(layer, inputs, run)
        assert out.shape == ref.shape and relative_error(out.float(), ref) < 4e-3, t.name


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_gate_cases_on_the_gpu(case):
    mean, stages, c, hidden, shape, layout, bias = CASES[case]
    layer, inputs = gate(mean, stages, c, hidden, shape, layout, bias)
    inputs = [t.to(CUDA) if t is not None else None for t in inputs]
    run = RunContext({})
    ref = squeeze_excite_reference(layer, [t.float() if t is not None else None for t in inputs], run)
    for name in CONFIGS:
        (tactic,) = [t for t in tactics_for(layer, BuildTarget(CUDA, torch.float16)) if t.name == name]
        assert relative_error(tactic.fn(layer, inputs, run).float(), ref) < 4e-3, name
