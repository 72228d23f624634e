"""Attention written by hand, captured and converted as a build would, becomes one `attention` layer whose plan gives
eager's outputs: on the reference tactic (SDPA) and on the unfused tactic (bmm, generated softmax, bmm; Triton's
interpreter without a GPU). Chains that are not attention over the last dim are left alone."""


import pytest
import torch
from torch import nn

from kiln.engine.builder.build import build_plan
from kiln.engine.kernels.attention_unfused import triton
from kiln.engine.optimize.fuse_attention import choose_split, finest_batch, fuse_attention_layers
from kiln.engine.plan import Step
from kiln.engine.runtime import PlanExecutor
from tests.helpers import network_as_cuda_build, relative_error

HEADS, TOKENS, DIM = 3, 6, 8


class Attention(nn.Module):
    """softmax(q k^T * scale + biases) v, written out in the ways timm's models write it."""

    def __init__(self, style: str, windows: int = 2):
        super().__init__()
        self.style, self.windows = style, windows
        self.qkv = nn.Linear(HEADS * DIM, 3 * HEADS * DIM)
        self.bias = nn.Parameter(torch.randn(1, HEADS, TOKENS, TOKENS))
        mask = torch.where(torch.rand(windows, TOKENS, TOKENS) < 0.3, -100.0, 0.0)
        self.register_buffer("mask", mask)
        self.scale = DIM**-0.5

    def forward(self, x, extra=None):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, DIM).permute(2, 0, 3, 1, 4).unbind(0)
        if self.style == "plain":
            attn = (q @ k.transpose(-2, -1)) * self.scale
        elif self.style == "scaled_q":  # Swin: the scale multiplies q first
            attn = (q * self.scale) @ k.transpose(-2, -1)
        elif self.style == "bias":  # LeViT: a divided scale, then a relative-position bias
            attn = (q @ k.transpose(-2, -1)) / DIM**0.5 + self.bias
        elif self.style == "swin_shifted":  # bias, then the window mask added to the scores viewed per window
            attn = (q * self.scale) @ k.transpose(-2, -1) + self.bias
            attn = attn.view(-1, self.windows, HEADS, n, n) + self.mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, HEADS, n, n)
        elif self.style == "runtime_mask":  # a padding mask given with the inputs, broadcast over heads and queries
            attn = (q @ k.transpose(-2, -1)) * self.scale + extra[:, None, None, :]
        elif self.style == "fp32_softmax":  # the softmax in FP32 between casts
            attn = ((q @ k.transpose(-2, -1)) * self.scale).float().softmax(-1).to(v.dtype)
            return (attn @ v).transpose(1, 2).reshape(b, n, -1)
        elif self.style == "softmax_over_queries":  # not attention: softmax over dim -2
            return (((q @ k.transpose(-2, -1)) * self.scale).softmax(-2) @ v).transpose(1, 2).reshape(b, n, -1)
        elif self.style == "scores_read_twice":  # the probabilities are an output too: must stay
            p = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
            return (p @ v).transpose(1, 2).reshape(b, n, -1), p
        attn = attn.softmax(dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, n, -1)


def converted(model, inputs, half=False):
    """The model captured, lowered and converted as a build would, before any optimize pass except precision."""
    precisions = {torch.half} if half else {torch.float32}
    return network_as_cuda_build(model, inputs, only=("bind_symbols", "place_quantization", "assign_precision"), precisions=precisions)


def run_plan(network, settings, values, tactic=None):
    """The network's plan run on `values` (the forward's arguments, by name), its outputs in the forward's order."""
    plan = build_plan(network, settings)
    if tactic is not None:
        plan.steps = [Step(s.layer, tactic) if s.layer.kind == "attention" else s for s in plan.steps]
    by_name = dict(zip(("x", "extra"), values))
    outs = PlanExecutor(plan).run([by_name[n] for n in plan.inputs], torch.zeros(plan.arena.size, dtype=torch.uint8))
    return sorted(outs, key=lambda t: t.dim() != 3)


def inputs_for(style, batch=4):
    x = torch.randn(batch, TOKENS, HEADS * DIM)
    if style == "runtime_mask":
        return [x, torch.where(torch.rand(batch, TOKENS) < 0.3, -1e4, 0.0)]
    return [x]


@pytest.mark.parametrize("style", ["plain", "scaled_q", "bias", "swin_shifted", "runtime_mask"])
def test_hand_written_attention_becomes_one_layer_and_matches_eager(style):
    torch.manual_seed(0)
    model = Attention(style).eval()
    inputs = inputs_for(style)
    network, settings = converted(model, inputs)
    fused = fuse_attention_layers(network)
    kinds = [m.kind for m in fused.layers]
    assert kinds.count("attention") == 1 and "softmax" not in kinds and "matmul" not in kinds, kinds
    with torch.no_grad():
        eager = model(*inputs)
    (got,) = run_plan(fused, settings, inputs)
    assert relative_error(got, eager) < 1e-5, style
    if triton is not None:
        (unfused,) = run_plan(fused, settings, inputs, "triton_unfused")
        assert relative_error(unfused, eager) < 1e-5, style


def test_swin_mask_is_one_constant_over_windows_and_heads_broadcast_over_the_batch():
    torch.manual_seed(1)
    model = Attention("swin_shifted", windows=2).eval()
    network, _ = converted(model, inputs_for("swin_shifted", batch=6))
    fused = fuse_attention_layers(network)
    (attention,) = [m for m in fused.layers if m.kind == "attention"]
    q, k, v, mask = (fused.tensors[n] for n in attention.inputs)
    # 6 windows of 2 per image: N = 3 images, H = 2 windows x 3 heads; the mask [1, 6, L, L] over the images.
    assert list(q.shape) == [3, 2 * HEADS, TOKENS, DIM] and list(mask.shape) == [1, 2 * HEADS, TOKENS, TOKENS]
    assert mask.role == "constant" and attention.attrs["scale"] == pytest.approx(DIM**-0.5)
    expected = (model.bias + model.mask.unsqueeze(1)).reshape(1, 2 * HEADS, TOKENS, TOKENS)
    torch.testing.assert_close(fused.constants[mask.name], expected)
    # The old bias and mask constants are gone with the adds that read them.
    assert not [n for n in fused.constants if fused.tensors[n].shape[-2:] == [TOKENS, TOKENS] and n != mask.name]


def test_fp32_softmax_between_casts_matches_eager_in_half():
    torch.manual_seed(2)
    model = Attention("fp32_softmax").eval().half()
    inputs = [t.half() for t in inputs_for("fp32_softmax")]
    network, settings = converted(model, inputs, half=True)
    assert "cast" in [m.kind for m in network.layers]
    fused = fuse_attention_layers(network)
    kinds = [m.kind for m in fused.layers]
    assert kinds.count("attention") == 1 and "softmax" not in kinds, kinds
    with torch.no_grad():
        eager = model(*inputs)
    (got,) = run_plan(fused, settings, inputs)
    assert got.dtype == torch.half and relative_error(got.float(), eager.float()) < 5e-3


@pytest.mark.parametrize("style", ["softmax_over_queries", "scores_read_twice"])
def test_what_is_not_attention_is_left_alone(style):
    torch.manual_seed(3)
    model = Attention(style).eval()
    inputs = inputs_for(style)
    network, settings = converted(model, inputs)
    before = [m.kind for m in network.layers]
    fused = fuse_attention_layers(network)
    assert [m.kind for m in fused.layers] == before
    with torch.no_grad():
        eager = model(*inputs)
    got = run_plan(fused, settings, inputs)
    for g, e in zip(got, eager if isinstance(eager, tuple) else (eager,)):
        assert relative_error(g, e) < 1e-5


def test_finest_batch_and_split():
    assert finest_batch([[1536], [512, 3], [8, 64, 3], [512, 3]]) == [8, 64, 3]
    assert finest_batch([[6, 4], [4, 6]]) is None
    assert finest_batch([[]]) == []
    # Swin's shifted windows: the mask varies over windows and heads, not images -> N = images, H = windows x heads.
    assert choose_split([1, 64, 3, 49, 49], [8, 64, 3], runtime=False) == 1
    # A runtime padding mask over images only: N = images.
    assert choose_split([8, 1, 1, 49], [8, 3], runtime=True) == 1
    # A runtime mask over part of both groups cannot be split without materialising it.
    assert choose_split([8, 1, 3, 1, 49], [8, 4, 3], runtime=True) is None
    assert choose_split(None, [512, 3], runtime=False) == 1


@pytest.mark.skipif(triton is None, reason="Triton is not installed")
def test_unfused_tactic_against_the_reference_and_what_it_declines():
    from kiln.engine.ir.network import Layer
    from kiln.engine.kernels.attention import attention_reference
    from kiln.engine.kernels.attention_unfused import attention_unfused
    from kiln.engine.kernels.registry import RunContext

    torch.manual_seed(4)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    layer = Layer("attention", "a", ["q", "k", "v", "m"], ["o"], {"is_causal": False, "scale": None, "enable_gqa": False})
    run = RunContext({})
    for mask in (None, torch.randn(1, 3, 1, 7)):
        expected = attention_reference(layer, [q, k, v, mask], run)
        assert relative_error(attention_unfused(layer, [q, k, v, mask], run), expected) < 1e-5
    with pytest.raises(ValueError, match="boolean"):
        attention_unfused(layer, [q, k, v, torch.ones(1, 1, 5, 7, dtype=torch.bool)], run)
