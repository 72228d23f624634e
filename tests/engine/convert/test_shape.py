import pytest
import torch

from tests.helpers import Lambda, check_against_eager


def layer_kinds(compiled) -> set[str]:
    return {layer[1] for layers in compiled.report.layers.values() for layer in layers}


X = torch.randn(4, 6, 8)

# name → (function, the layer kind it must become)
SHAPE_OPS = {
    "view": (lambda x: x.view(4, 48), "reshape"),
    "view_infer": (lambda x: x.view(-1, 8), "reshape"),
    "reshape": (lambda x: x.permute(2, 0, 1).reshape(8, -1), "reshape"),
    "flatten": (lambda x: x.flatten(1), "reshape"),
    "flatten_all": (lambda x: x.flatten(), "reshape"),
    "unflatten": (lambda x: x.unflatten(2, (2, 4)), "reshape"),
    "squeeze_dim": (lambda x: x[:, :1].squeeze(1), "reshape"),
    "squeeze_all": (lambda x: x[:1, :, :1].squeeze(), "reshape"),
    "squeeze_negative": (lambda x: x[..., :1].squeeze(-1), "reshape"),
    "unsqueeze": (lambda x: x.unsqueeze(1), "reshape"),
    "unsqueeze_negative": (lambda x: x.unsqueeze(-1), "reshape"),
    "none_index": (lambda x: x[:, None], "reshape"),
    "permute": (lambda x: x.permute(2, 0, 1), "permute"),
    "permute_negative": (lambda x: x.permute(-1, -3, -2), "permute"),
    "transpose": (lambda x: x.transpose(0, 2), "permute"),
    "mT": (lambda x: x.mT, "permute"),
    "contiguous": (lambda x: x.transpose(1, 2).contiguous(), "permute"),
    "expand": (lambda x: x[:, :1].expand(4, 6, 8), "expand"),
    "expand_keep": (lambda x: x[:, :1].expand(-1, 5, -1), "expand"),
    "expand_new_dims": (lambda x: x.expand(2, 3, 4, 6, 8), "expand"),
    "expand_as": (lambda x: x[:1].expand_as(x), "expand"),
    "flip": (lambda x: x.flip(0, -1), "flip"),
    "repeat": (lambda x: x.repeat(2, 1, 3), "repeat"),
    "repeat_new_dims": (lambda x: x.repeat(2, 1, 1, 1), "repeat"),
    "cat": (lambda x: torch.cat([x, x[:, :2], x * 2], 1), "concat"),
    "cat_negative": (lambda x: torch.cat([x, x], -1), "concat"),
    "cat_default_dim": (lambda x: torch.cat([x, x[:1]]), "concat"),
    "stack": (lambda x: torch.stack([x, x + 1], 1), "concat"),
    "stack_last": (lambda x: torch.stack([x, x + 1, x * 3], -1), "concat"),
    "hstack": (lambda x: torch.hstack([x, x]), "concat"),
    "split": (lambda x: x.split(2, 1), "split"),
    "split_uneven": (lambda x: x.split(3, 2), "split"),
    "split_with_sizes": (lambda x: x.split([1, 5], 1), "split"),
    "split_negative_dim": (lambda x: x.split([3, 5], -1), "split"),
    "chunk": (lambda x: x.chunk(3, 2), "split"),
    "chunk_uneven": (lambda x: x.chunk(3, 0), "split"),
    "tensor_split": (lambda x: x.tensor_split([1, 4], 1), "slice"),
    "unbind": (lambda x: x.unbind(1), "reshape"),
}


@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
def test_shape_op_matches_eager(name):
    fn, kind = SHAPE_OPS[name]
    compiled = check_against_eager(Lambda(fn), X)
    assert kind in layer_kinds(compiled)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.float16])
def test_shape_ops_keep_dtype(dtype):
    x = (torch.randn(4, 6, 8) * 5).to(dtype)
    fn = lambda x: torch.cat([x.permute(2, 0, 1).reshape(8, 24), x[:1].expand(8, 6, 8).flatten(1)], 1)  # noqa: E731
    check_against_eager(Lambda(fn), x)


def test_cat_promotes_dtypes():
    a = torch.randn(2, 3)
    b = torch.arange(6, dtype=torch.int32).view(2, 3)
    check_against_eager(Lambda(lambda a, b: torch.cat([a, b], 0)), a, b)


def test_split_with_weight_input():
    w = torch.randn(6, 8)
    check_against_eager(Lambda(lambda x, w: (x + w).split([2, 4], 1)[1] * 2, w), X)
