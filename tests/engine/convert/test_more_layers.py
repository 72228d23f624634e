"""Converters added for Torch-TensorRT parity: norms with statistics outputs, dropout, copy, clamp
bounds, pixel shuffle, grid sampling, distances, 3-D pooling, embedding bags."""

import operator

import pytest
import torch
import torch.nn.functional as F

from tests.engine.convert.test_shape import layer_kinds
from tests.helpers import Lambda, check_against_eager

aten = torch.ops.aten
# Fixed operands: a torch.rand inside a test function would draw anew on every call.
torch.manual_seed(0)
GRID = torch.rand(2, 3, 4, 2) * 3 - 1.5
GAMMA, BETA = torch.rand(6), torch.randn(6)
W8, B8 = torch.rand(8) + 0.5, torch.randn(8)

CASES = {
    "native_layer_norm": (lambda x: aten.native_layer_norm.default(x, [8], W8, B8, 1e-5)[0], (2, 3, 8), "norm"),
    "native_layer_norm_no_affine": (lambda x: aten.native_layer_norm.default(x, [3, 8], None, None, 1e-5)[0], (2, 3, 8), "norm"),
    "native_group_norm": (lambda x: aten.native_group_norm.default(x, GAMMA, BETA, 2, 6, 20, 3, 1e-5)[0], (2, 6, 4, 5), "norm"),
    "native_dropout_eval": (lambda x: aten.native_dropout.default(x, 0.3, False)[0] * 2, (3, 4), "copy"),
    "native_dropout_mask": (lambda x: aten.native_dropout.default(x * 2, 0.3, False)[1], (3, 4), "expand"),
    "copy_broadcast": (lambda x: aten.copy.default(torch.zeros(3, 4), x[0] * 2), (3, 4), "expand"),
    "copy_cast": (lambda x: aten.copy.default(torch.zeros(3, 4, dtype=torch.float16), x + 1), (3, 4), "cast"),
    "clamp_min_tensor": (lambda x: aten.clamp_min.Tensor(x, torch.linspace(-1, 1, 4)), (3, 4), "binary"),
    "clamp_max_tensor": (lambda x: aten.clamp_max.Tensor(x, torch.linspace(-1, 1, 4)), (3, 4), "binary"),
    "clamp_tensor_min_only": (lambda x: torch.clamp(x, min=torch.zeros(4)), (3, 4), "binary"),
    "pixel_shuffle": (lambda x: F.pixel_shuffle(x, 2), (1, 8, 3, 5), "pixel_shuffle"),
    "pixel_unshuffle": (lambda x: F.pixel_unshuffle(x * 2, 2), (1, 2, 4, 6), None),
    "grid_sample_bilinear": (lambda x: F.grid_sample(x, GRID / 1.5, align_corners=False), (2, 3, 5, 6), "grid_sample"),
    "grid_sample_nearest_border": (
        lambda x: F.grid_sample(x, GRID, mode="nearest", padding_mode="border", align_corners=True),
        (2, 3, 5, 6),
        "grid_sample",
    ),
    "grid_sample_bicubic_reflection": (
        lambda x: F.grid_sample(x, GRID, mode="bicubic", padding_mode="reflection"),
        (2, 3, 5, 6),
        "grid_sample",
    ),
    "cdist_p2": (lambda x: torch.cdist(x, x[:, :3] + 1), (2, 5, 4), "cdist"),
    "cdist_p1": (lambda x: torch.cdist(x, x * 2, p=1.0), (2, 5, 4), "cdist"),
    "pdist": (lambda x: F.pdist(x), (6, 4), "pdist"),
    "pdist_p3": (lambda x: F.pdist(x, p=3.0), (6, 4), "pdist"),
    "max_pool3d": (lambda x: F.max_pool3d(x, 2), (1, 2, 4, 6, 6), "pool3d"),
    "max_pool3d_padded_dilated": (lambda x: F.max_pool3d(x, 3, 1, 1, 2, ceil_mode=True), (1, 2, 6, 6, 7), "pool3d"),
    "avg_pool3d": (lambda x: F.avg_pool3d(x, (2, 3, 2), (1, 2, 2), (1, 1, 0), count_include_pad=False), (1, 2, 4, 6, 6), "pool3d"),
    "adaptive_avg_pool3d": (lambda x: F.adaptive_avg_pool3d(x, (2, 3, 1)), (1, 2, 4, 6, 5), "pool3d"),
    "adaptive_max_pool3d": (lambda x: F.adaptive_max_pool3d(x, 2), (2, 4, 6, 5), "pool3d"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_matches_eager(name):
    torch.manual_seed(0)
    fn, shape, kind = CASES[name]
    compiled = check_against_eager(Lambda(fn), torch.randn(shape))
    if kind is not None:
        assert kind in layer_kinds(compiled)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("last_offset", [False, True])
def test_embedding_bag_matches_eager(mode, last_offset):
    table = torch.randn(10, 4)
    ids, offsets = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 3, 5, 8] if last_offset else [0, 3, 5])
    model = Lambda(lambda i, o, w: F.embedding_bag(i, w, o, mode=mode, include_last_offset=last_offset), table)
    compiled = check_against_eager(model, ids, offsets)
    assert "embedding_bag" in layer_kinds(compiled)


def test_embedding_bag_with_per_sample_weights():
    table = torch.randn(10, 4)
    model = Lambda(lambda i, o, p, w: F.embedding_bag(i, w, o, mode="sum", per_sample_weights=p, padding_idx=2), table)
    check_against_eager(model, torch.tensor([1, 2, 4, 5, 4, 3]), torch.tensor([0, 2]), torch.rand(6))


def test_native_layer_norm_statistics_outputs_stay_in_pytorch():
    import kiln

    model = Lambda(lambda x: aten.native_layer_norm.default(x, [8], None, None, 1e-5)[1] * 2).eval()
    compiled = kiln.compile(model, [torch.randn(2, 8)], min_block_size=1)
    assert any("statistics outputs" in r.reason for r in compiled.report.fallback), compiled.report.table()
    x = torch.randn(2, 8)
    assert torch.allclose(compiled(x), model(x))
    assert operator  # the getitem of output 1 is what sends it to PyTorch
