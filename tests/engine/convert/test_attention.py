import pytest
import torch
import torch.nn.functional as F

import kiln
from tests.helpers import Lambda, check_against_eager

B, H, L, S, E = 2, 4, 6, 9, 8


class _Attention(torch.nn.Module):
    """q from the input; k and v from a second input so L != S can be tested."""

    def __init__(self, fn, *weights):
        super().__init__()
        self.fn = fn
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in weights])

    def forward(self, q, kv):
        return self.fn(q, kv, *self.weights)


ATTENTIONS = {
    "plain": (lambda q, kv: F.scaled_dot_product_attention(q, kv, kv), []),
    "distinct_k_v": (lambda q, kv: F.scaled_dot_product_attention(q, kv, kv * 2 - 1), []),
    "causal": (lambda q, kv: F.scaled_dot_product_attention(q, kv, kv, is_causal=True), []),
    "causal_self": (lambda q, kv: F.scaled_dot_product_attention(q, q, q, is_causal=True), []),
    "custom_scale": (lambda q, kv: F.scaled_dot_product_attention(q, kv, kv, scale=0.3), []),
    "bool_mask": (lambda q, kv, m: F.scaled_dot_product_attention(q, kv, kv, attn_mask=m), [torch.rand(L, S) > 0.3]),
    "bool_mask_broadcast_heads": (lambda q, kv, m: F.scaled_dot_product_attention(q, kv, kv, attn_mask=m), [torch.rand(B, 1, L, S) > 0.3]),
    "float_mask": (lambda q, kv, m: F.scaled_dot_product_attention(q, kv, kv, attn_mask=m), [torch.randn(B, H, L, S)]),
    "float_mask_and_scale": (lambda q, kv, m: F.scaled_dot_product_attention(q, kv, kv, attn_mask=m, scale=0.5), [torch.randn(L, S)]),
    "gqa": (lambda q, kv: F.scaled_dot_product_attention(q, kv[:, :2], kv[:, :2], enable_gqa=True), []),
    "gqa_causal": (lambda q, kv: F.scaled_dot_product_attention(q, kv[:, :1], kv[:, 1:2], is_causal=True, enable_gqa=True), []),
}


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_attention_matches_eager(name):
    fn, weights = ATTENTIONS[name]
    compiled = check_against_eager(_Attention(fn, *weights), torch.randn(B, H, L, E), torch.randn(B, H, S, E))
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "attention" in kinds


def test_attention_3d_inputs():
    check_against_eager(Lambda(lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True)), torch.randn(3, L, E))


def test_attention_dropout_falls_back_with_reason():
    model = Lambda(lambda x: F.scaled_dot_product_attention(x, x, x, dropout_p=0.5))
    x = torch.randn(B, H, L, E)
    report = kiln.compile(model, [x], min_block_size=1, dryrun=True)
    row = next(r for r in report.rows if r.op == "aten.scaled_dot_product_attention.default")
    assert row.where == "pytorch"
    assert "dropout" in row.reason
