"""Hand-written attention on the GPU: timm's Swin-T and LeViT compiled in FP16 against eager, with every window or
LeViT attention one `attention` layer in the plan; each attention tactic against the reference at Swin's and LeViT's
shapes (float mask broadcast over the batch of images); the small modules of the CPU tests compiled end to end.

Run with -s to see, per attention layer, the tactic the builder kept and the times it measured."""

import pytest
import torch

import kiln
from kiln.engine.ir.network import Layer
from kiln.engine.kernels.attention import attention_reference
from kiln.engine.kernels.registry import BuildTarget, RunContext, tactics_for
from tests.engine.optimize.test_fuse_attention import Attention, inputs_for
from tests.helpers import relative_error

CUDA = torch.device("cuda")


def _attention_steps(compiled):
    return [s for e in compiled.engine_blocks.values() for s in e.plan.steps if s.layer.kind == "attention"]


def _show(steps):
    for s in steps:
        shown = ", ".join(f"{k} {v * 1000:.1f}us" for k, v in sorted(s.timings.items(), key=lambda kv: kv[1]))
        print(f"{s.layer.name}: kept {s.tactic} ({shown})")


@pytest.mark.parametrize("name,count", [("swin_tiny_patch4_window7_224", 12), ("levit_128", 14)])
def test_timm_hand_written_attention_fuses_and_matches_eager(name, count):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().to(CUDA)
    x = torch.randn(2, 3, 224, 224, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half})
    with torch.no_grad():
        for inputs in (x, torch.randn_like(x)):
            # A deep FP16 network against the FP32 model (tests/gpu/test_precision.py's bound).
            assert relative_error(compiled(inputs).float(), model(inputs)) < 2e-2
    steps = _attention_steps(compiled)
    assert len(steps) == count, [s.layer.kind for e in compiled.engine_blocks.values() for s in e.plan.steps]
    assert not [s for e in compiled.engine_blocks.values() for s in e.plan.steps if s.layer.kind == "matmul"]
    _show(steps)


# (q shape, k/v rows, mask shape): Swin-T's shifted windows at batch 64 (N = images, H = 64 windows x 3 heads),
# its plain windows, LeViT-128's first stage with its bias over heads, and its subsampling attention (49 queries).
SHAPES = [
    ((64, 192, 49, 32), 49, 32, (1, 192, 49, 49)),
    ((4096, 3, 49, 32), 49, 32, (1, 3, 49, 49)),
    ((64, 4, 196, 16), 196, 32, (1, 4, 196, 196)),
    ((64, 8, 49, 16), 196, 64, (1, 8, 49, 196)),
    ((8, 4, 50, 64), 50, 64, None),
]


@pytest.mark.parametrize("q_shape,keys,value_depth,mask_shape", SHAPES)
def test_attention_tactics_against_the_reference(q_shape, keys, value_depth, mask_shape):
    torch.manual_seed(0)
    n, h, length, depth = q_shape
    q = torch.randn(q_shape, device=CUDA, dtype=torch.half)
    k = torch.randn(n, h, keys, depth, device=CUDA, dtype=torch.half)
    v = torch.randn(n, h, keys, value_depth, device=CUDA, dtype=torch.half)
    mask = None
    if mask_shape is not None:
        mask = (torch.randn(mask_shape, device=CUDA) + torch.where(torch.rand(mask_shape, device=CUDA) < 0.2, -100.0, 0.0)).half()
    attrs = {"is_causal": False, "scale": depth**-0.5, "enable_gqa": False}
    layer = Layer("attention", "attention", ["q", "k", "v", "mask" if mask is not None else None], ["out"], attrs)
    run = RunContext({})
    inputs = [q, k, v, mask]
    ref = attention_reference(layer, [t.float() if t is not None else None for t in inputs], run)
    names = []
    for t in tactics_for(layer, BuildTarget(CUDA, torch.float16)):
        try:
            out = t.fn(layer, inputs, run)
        except (RuntimeError, ValueError) as exc:  # a backend declining this shape or mask, as the builder skips it
            print(f"{t.name} declines {q_shape}: {str(exc)[:80]}")
            continue
        names.append(t.name)
        assert out.shape == ref.shape and relative_error(out.float(), ref) < 4e-3, t.name
    assert "triton_unfused" in names and len(names) >= 2, names


@pytest.mark.parametrize("style", ["plain", "scaled_q", "bias", "swin_shifted", "runtime_mask", "fp32_softmax"])
def test_small_attention_modules_compile_and_match_eager(style):
    torch.manual_seed(0)
    model = Attention(style).eval().to(CUDA)
    inputs = [t.to(CUDA) for t in inputs_for(style)]
    compiled = kiln.compile(model, inputs, enabled_precisions={torch.half}, min_block_size=1)
    with torch.no_grad():
        assert relative_error(compiled(*inputs).float(), model(*inputs).float()) < 1e-2
    steps = _attention_steps(compiled)
    assert len(steps) == 1
    _show(steps)
