import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Lambda, check_against_eager

RESIZES = {
    "nearest_scale_2": (lambda x: F.interpolate(x, scale_factor=2), 4),
    "nearest_scale_fractional": (lambda x: F.interpolate(x, scale_factor=1.7), 4),
    "nearest_scale_per_axis": (lambda x: F.interpolate(x, scale_factor=(2, 0.5)), 4),
    "nearest_size": (lambda x: F.interpolate(x, size=(5, 13)), 4),
    "nearest_downsample": (lambda x: F.interpolate(x, size=(3, 4)), 4),
    "nearest_module": (torch.nn.Upsample(scale_factor=3), 4),
    "nearest_exact": (lambda x: F.interpolate(x, size=(5, 13), mode="nearest-exact"), 4),
    "nearest_1d": (lambda x: F.interpolate(x, scale_factor=2), 3),
    "bilinear_scale": (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), 4),
    "bilinear_scale_fractional": (lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear"), 4),
    "bilinear_scale_align_corners": (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True), 4),
    "bilinear_size": (lambda x: F.interpolate(x, size=(5, 11), mode="bilinear"), 4),
    "bilinear_size_align_corners": (lambda x: F.interpolate(x, size=(5, 11), mode="bilinear", align_corners=True), 4),
    "bilinear_recompute_scale": (lambda x: F.interpolate(x, scale_factor=1.7, mode="bilinear", recompute_scale_factor=True), 4),
    "bilinear_downsample": (lambda x: F.interpolate(x, scale_factor=0.5, mode="bilinear"), 4),
    "linear_1d": (lambda x: F.interpolate(x, scale_factor=2.5, mode="linear"), 3),
    "linear_1d_align_corners": (lambda x: F.interpolate(x, size=17, mode="linear", align_corners=True), 3),
    "bicubic": (lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"), 4),
    "bicubic_size_align_corners": (lambda x: F.interpolate(x, size=(9, 10), mode="bicubic", align_corners=True), 4),
}


@pytest.mark.parametrize("name", sorted(RESIZES))
def test_resize_matches_eager(name):
    fn, rank = RESIZES[name]
    model = fn if isinstance(fn, torch.nn.Module) else Lambda(fn)
    x = torch.randn((2, 3, 7, 6)[:rank])
    compiled = check_against_eager(model, x)
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "resize" in kinds
