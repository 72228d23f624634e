"""Hand-written attention on the GPU: timm's Swin-T and LeViT compiled in FP16 against eager, with every window or
LeViT attention one `attention` layer in the plan; each attention tactic against the reference at Swin's and LeViT's
shapes (float mask broadcast over the batch of images); the small modules of the CPU tests compiled end to end.
The fused Triton kernel (kernels/triton_attention.py): at every shape above, in BF16, on a LeViT-like stage compiled
with the attention forced onto each of its configs, against eager, also from 2 threads on 2 streams. The SDPA
tactics on LeViT's head-split views: where a backend refuses the views only for their layout, it runs on copies.

Run with -s to see, per attention layer, the tactic the builder kept and the times it measured."""

import pytest
import torch

import kiln
from kiln.engine.builder import build
from kiln.engine.ir.network import Layer
from kiln.engine.kernels.aten_attention import ACCEPTS, BACKENDS, SDPAParams
from kiln.engine.kernels.attention import attention_reference
from kiln.engine.kernels.registry import BuildTarget, RunContext, get_tactic, tactics_for
from kiln.engine.kernels.triton_attention import CONFIGS, fused_attention
from tests.engine.optimize.test_fuse_attention import Attention, inputs_for
from tests.engine.optimize.test_levit_attention import LevitStage
from tests.gpu.test_concurrency import _hammer
from tests.helpers import plan_steps, print_timings, relative_error

CUDA = torch.device("cuda")


def _attention_steps(compiled):
    return plan_steps(compiled, "attention")



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
    assert len(steps) == count, [s.layer.kind for s in plan_steps(compiled)]
    assert not plan_steps(compiled, "matmul")
    print_timings(steps)


# (q shape, k/v rows, mask shape): Swin-T's shifted windows at batch 64 (N = images, H = 64 windows x 3 heads),
# its plain windows, LeViT-128's first stage with its bias over heads, and its subsampling attention (49 queries).
SHAPES = [
    ((64, 192, 49, 32), 49, 32, (1, 192, 49, 49)),
    ((4096, 3, 49, 32), 49, 32, (1, 3, 49, 49)),
    ((64, 4, 196, 16), 196, 32, (1, 4, 196, 196)),
    ((64, 8, 49, 16), 196, 64, (1, 8, 49, 196)),
    ((8, 4, 50, 64), 50, 64, None),
    # LeViT-128's last stage (16 tokens) and its second subsampling attention (16 queries over 49 keys, v 64), batch 1.
    ((1, 8, 16, 16), 16, 32, (1, 8, 16, 16)),
    ((1, 16, 16, 16), 49, 64, (1, 16, 16, 49)),
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
    assert "triton_unfused" in names and set(CONFIGS) <= set(names), names


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_triton_attention_in_bfloat16_with_a_boolean_mask_and_causal(config):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 70, d, device=CUDA, dtype=torch.bfloat16) for d in (16, 16, 32))
    bias = torch.randn(1, 4, 70, 70, device=CUDA, dtype=torch.bfloat16)
    allowed = torch.rand(2, 1, 70, 70, device=CUDA) < 0.5
    for mask, causal in ((bias, False), (allowed, False), (None, True)):
        attrs = {"is_causal": causal, "scale": None, "enable_gqa": False}
        layer = Layer("attention", "attention", ["q", "k", "v", "mask" if mask is not None else None], ["out"], attrs)
        floats = [t.float() if t is not None and t.dtype != torch.bool else t for t in (q, k, v, mask)]
        ref = attention_reference(layer, floats, RunContext({}))
        out = get_tactic("attention", config).fn(layer, [q, k, v, mask], RunContext({}))
        assert relative_error(out.float(), ref) < 2e-2, (config, causal, None if mask is None else mask.dtype)


def _levit_views(storage_offset: int = 0):
    """q, k, v as LeViT's Attention makes them (one projection split per head, permuted), batch 2, 4 heads, 196 tokens;
    with `storage_offset` elements in front, so q, k and v may start off a 16-byte boundary."""
    qkv = torch.randn(2 * 196 * 4 * 64 + storage_offset, device=CUDA, dtype=torch.half)[storage_offset:].view(2, 196, 4, 64)
    return [t.permute(0, 2, 1, 3) for t in qkv.split([16, 16, 32], dim=3)]


@pytest.mark.parametrize("storage_offset", [0, 4])
def test_sdpa_tactics_take_head_split_views_they_refuse_only_for_layout(storage_offset):
    """Prints, per backend, whether it takes LeViT's views as they are and as dense copies (and PyTorch's reasons);
    wherever it takes the copies, its tactic must run and match the reference."""
    torch.manual_seed(2)
    q, k, v = _levit_views(storage_offset)
    mask = torch.randn(1, 4, 196, 196, device=CUDA, dtype=torch.half)
    attrs = {"is_causal": False, "scale": 0.25, "enable_gqa": False}
    layer = Layer("attention", "attention", ["q", "k", "v", "mask"], ["out"], attrs)
    ref = attention_reference(layer, [q.float(), k.float(), v.float(), mask.float()], RunContext({}))
    dense = [t.contiguous() for t in (q, k, v, mask)]
    for name, backend in BACKENDS.items():
        if name == "sdpa_flash":
            continue  # takes no mask: not offered for masked layers
        accepts = ACCEPTS[backend]
        as_given = accepts(SDPAParams(q, k, v, mask, 0.0, False, False), True)  # debug=True: PyTorch warns why not
        as_dense = accepts(SDPAParams(*dense, 0.0, False, False))
        print(f"{name} at storage offset {storage_offset}: takes the views {as_given}, dense copies {as_dense}")
        if as_dense:
            out = get_tactic("attention", name).fn(layer, [q, k, v, mask], RunContext({}))
            assert relative_error(out.float(), ref) < 4e-3, name
    out = fused_attention(q, k, v, mask, attrs)  # reads the views in place, aligned or not
    assert relative_error(out.float(), ref) < 4e-3


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_levit_stage_on_each_triton_config_matches_eager_from_two_streams(config, monkeypatch):
    """The attention layers forced onto one Triton config (the builder's only candidate), compiled, against eager;
    then 2 threads, each on its own stream, calling the compiled module with their own inputs."""
    real = build.tactics_for

    def only_config(layer, target):
        found = real(layer, target)
        return [t for t in found if t.name == config] if layer.kind == "attention" else found

    monkeypatch.setattr(build, "tactics_for", only_config)
    torch.manual_seed(3)
    model = LevitStage().eval().to(CUDA)
    make = lambda: torch.randn(2, 49, 32, device=CUDA)
    x = make()
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    steps = _attention_steps(compiled)
    assert [s.tactic for s in steps] == [config, config]
    with torch.no_grad():
        assert relative_error(compiled(x).float(), model(x)) < 1e-2
    assert _hammer(compiled, model, make, own_streams=True, threads=2) < 1e-2


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
    print_timings(steps)
