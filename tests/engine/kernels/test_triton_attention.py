"""The fused Triton attention kernel against the reference tactic (SDPA on FP32 copies), in Triton's interpreter on a
CPU: head dims 8 to 64 equal and unequal between q/k and v (LeViT's 16 -> 32/64), additive biases broadcast over the
batch, the heads or the queries, query length != key length, lengths that are not multiples of the blocks (several
key blocks, a partial last one), boolean masks with a fully masked row, causal and grouped-query attention, strided
head-split views, and what it declines."""

import math

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_attention
from kiln.engine.kernels.attention import attention_reference
from kiln.engine.kernels.registry import BuildTarget, RunContext, get_tactic, tactics_for
from kiln.engine.kernels.triton_attention import CONFIGS, fused_attention
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_attention.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})
# FP16 probabilities times FP16 v, against FP32 SDPA: the unfused and SDPA tactics' bound in tests/gpu.
TOLERANCE = 4e-3


def attrs(scale=None, causal=False, gqa=False) -> dict:
    return {"is_causal": causal, "scale": scale, "enable_gqa": gqa}


def layer_for(a: dict, masked: bool) -> Layer:
    return Layer("attention", "attention", ["q", "k", "v", "mask" if masked else None], ["out"], a)


def reference(q, k, v, mask, a):
    inputs = [t.float() if t is not None and t.dtype != torch.bool else t for t in (q, k, v, mask)]
    return attention_reference(layer_for(a, mask is not None), inputs, RUN)


def make(n, h, length, keys, depth, value_depth, dtype=torch.half, kv_heads=None):
    kv_heads = kv_heads or h
    q = torch.randn(n, h, length, depth, device=DEVICE).to(dtype)
    k = torch.randn(n, kv_heads, keys, depth, device=DEVICE).to(dtype)
    v = torch.randn(n, kv_heads, keys, value_depth, device=DEVICE).to(dtype)
    return q, k, v


def bias(shape, dtype=torch.half):
    """A learned-bias-like mask with some keys pushed far down, as Swin's window mask does."""
    far = torch.where(torch.rand(shape, device=DEVICE) < 0.2, -100.0, 0.0)
    return (torch.randn(shape, device=DEVICE) + far).to(dtype)


# (n, heads, queries, keys, q/k head dim, v head dim, mask shape or None, config)
CASES = [
    (2, 3, 5, 7, 8, 8, (1, 3, 1, 7), "triton_attention"),  # head dim 8 padded to 16, bias over heads and keys
    (2, 2, 20, 20, 16, 16, None, "triton_attention_16x64"),  # 20 queries: a full and a partial query block
    (1, 4, 33, 70, 32, 32, (1, 1, 33, 70), "triton_attention_16x64"),  # 70 keys: two key blocks; a bias over queries
    (1, 2, 17, 17, 64, 64, (1, 2, 17, 17), "triton_attention_32x64"),
    (2, 4, 49, 49, 16, 32, (1, 4, 49, 49), "triton_attention"),  # LeViT stage 2: v head dim 32
    (1, 8, 16, 49, 16, 64, (1, 8, 16, 49), "triton_attention_128x64"),  # LeViT's subsampling: 16 queries, 49 keys
    (2, 3, 12, 9, 24, 40, (2, 1, 1, 9), "triton_attention_16x64"),  # head dims that are no power of two; a padding mask
    (3, 2, 6, 6, 16, 8, (6, 6), "triton_attention"),  # a 2-D mask over every batch and head; v narrower than q/k
]


@pytest.mark.parametrize("n,h,length,keys,depth,value_depth,mask_shape,config", CASES)
def test_against_the_reference(n, h, length, keys, depth, value_depth, mask_shape, config):
    torch.manual_seed(0)
    q, k, v = make(n, h, length, keys, depth, value_depth)
    mask = bias(mask_shape) if mask_shape is not None else None
    a = attrs(scale=depth**-0.5 * 1.3)
    tactic = get_tactic("attention", config)
    out = tactic.fn(layer_for(a, mask is not None), [q, k, v, mask], RUN)
    expected = reference(q, k, v, mask, a)
    assert out.shape == expected.shape and out.dtype == q.dtype
    assert relative_error(out.float(), expected) < TOLERANCE


def test_every_config_over_several_query_and_key_blocks():
    torch.manual_seed(1)
    q, k, v = make(1, 2, 70, 150, 16, 32)
    mask = bias((1, 2, 70, 150))
    expected = reference(q, k, v, mask, attrs())
    for name, config in CONFIGS.items():
        out = fused_attention(q, k, v, mask, attrs(), config=config)
        assert relative_error(out.float(), expected) < TOLERANCE, name


def test_boolean_mask_with_a_fully_masked_row_gives_zeros_there():
    torch.manual_seed(2)
    q, k, v = make(2, 2, 9, 11, 16, 16)
    mask = torch.rand(2, 1, 9, 11, device=DEVICE) < 0.7
    mask[:, :, 3] = False  # nothing to attend to: the math backend gives zeros, not NaN
    out = fused_attention(q, k, v, mask, attrs())
    expected = reference(q, k, v, mask, attrs())
    assert not out.isnan().any() and (out[:, :, 3] == 0).all()
    assert relative_error(out.float(), expected) < TOLERANCE


def test_causal_with_more_keys_than_queries_and_grouped_query_heads():
    torch.manual_seed(3)
    q, k, v = make(1, 4, 10, 13, 16, 32)
    expected = reference(q, k, v, None, attrs(causal=True))
    assert relative_error(fused_attention(q, k, v, None, attrs(causal=True)).float(), expected) < TOLERANCE
    q, k, v = make(2, 6, 7, 7, 32, 32, kv_heads=2)
    expected = reference(q, k, v, None, attrs(gqa=True))
    assert relative_error(fused_attention(q, k, v, None, attrs(gqa=True)).float(), expected) < TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton's interpreter computes tl.dot on BF16 wrongly")
def test_bfloat16():
    torch.manual_seed(4)
    q, k, v = make(1, 3, 8, 12, 16, 16, dtype=torch.bfloat16)
    mask = bias((1, 1, 8, 12), torch.bfloat16)
    expected = reference(q, k, v, mask, attrs())
    assert relative_error(fused_attention(q, k, v, mask, attrs()).float(), expected) < 2e-2  # BF16's 8-bit mantissa


def test_three_dim_inputs():
    torch.manual_seed(4)
    q3, k3, v3 = (t[0] for t in make(1, 3, 8, 12, 16, 16))
    out = fused_attention(q3, k3, v3, None, attrs())
    assert out.shape == (3, 8, 16) and relative_error(out.float(), reference(q3, k3, v3, None, attrs())) < TOLERANCE


def test_reads_head_split_views_of_a_qkv_projection_in_place():
    """LeViT splits each head of one projection into q (16), k (16) and v (32) and permutes: three strided views."""
    torch.manual_seed(5)
    batch, tokens, heads = 2, 13, 3
    qkv = torch.randn(batch, tokens, heads, 64, device=DEVICE).half()
    q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split([16, 16, 32], dim=3))
    assert not q.is_contiguous() and v.stride(-1) == 1
    mask = bias((heads, tokens, tokens))[None]
    out = torch.empty(batch, heads, tokens, 32, device=DEVICE).half()
    got = fused_attention(q, k, v, mask, attrs(scale=0.25), out=out)
    assert got.data_ptr() == out.data_ptr()  # the planned buffer is written, no other is made
    assert relative_error(got.float(), reference(q, k, v, mask, attrs(scale=0.25))) < TOLERANCE


def test_default_scale_is_one_over_the_root_of_the_q_head_dim():
    torch.manual_seed(6)
    q, k, v = make(1, 1, 5, 5, 16, 32)
    explicit = fused_attention(q, k, v, None, attrs(scale=1 / math.sqrt(16)))
    assert torch.equal(fused_attention(q, k, v, None, attrs()), explicit)


def test_what_it_declines():
    q, k, v = make(1, 1, 4, 4, 16, 16)
    with pytest.raises(ValueError, match="FP16/BF16"):
        fused_attention(q.float(), k.float(), v.float(), None, attrs())
    with pytest.raises(ValueError, match="is_causal"):
        fused_attention(q, k, v, bias((4, 4)), attrs(causal=True))
    wide = make(1, 1, 4, 4, 320, 16)
    with pytest.raises(ValueError, match="head dims"):
        fused_attention(*wide, None, attrs())
    with pytest.raises(ValueError, match="grouped-query"):
        fused_attention(q, *make(1, 2, 4, 4, 16, 16)[1:], None, attrs())


def test_offered_on_cuda_builds_only():
    layer = layer_for(attrs(), masked=True)
    on_cuda = {t.name for t in tactics_for(layer, BuildTarget(torch.device("cuda"), torch.float16))}
    on_cpu = {t.name for t in tactics_for(layer, BuildTarget(torch.device("cpu"), torch.float16))}
    assert set(CONFIGS) <= on_cuda and not set(CONFIGS) & on_cpu
    assert all(get_tactic("attention", name).compiles_on_first_call for name in CONFIGS)
