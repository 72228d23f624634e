import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Lambda, check_against_eager

PADS = {
    "constant_last_dim": (lambda x: F.pad(x, (1, 2)), (2, 3, 5, 6)),
    "constant_two_dims_value": (lambda x: F.pad(x, (1, 2, 0, 3), value=0.5), (2, 3, 5, 6)),
    "constant_three_dims": (lambda x: F.pad(x, (1, 1, 2, 0, 1, 3)), (2, 3, 5, 6)),
    "constant_negative_crops": (lambda x: F.pad(x, (-1, 2, 1, -2)), (2, 3, 5, 6)),
    "zero_pad_module": (torch.nn.ZeroPad2d((1, 2, 3, 4)), (2, 3, 5, 6)),
    "constant_pad_1d_module": (torch.nn.ConstantPad1d(2, 3.0), (2, 3, 5)),
    "reflect_2d": (lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect"), (2, 3, 5, 6)),
    "reflect_1d": (lambda x: F.pad(x, (3, 1), mode="reflect"), (2, 3, 6)),
    "replicate_2d": (lambda x: F.pad(x, (1, 2, 0, 3), mode="replicate"), (2, 3, 5, 6)),
    "circular_2d": (lambda x: F.pad(x, (1, 2, 2, 1), mode="circular"), (2, 3, 5, 6)),
    "conv_reflect_padding_mode": (torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 5, 6)),
}


@pytest.mark.parametrize("name", sorted(PADS))
def test_pad_matches_eager(name):
    fn, shape = PADS[name]
    model = fn if isinstance(fn, torch.nn.Module) else Lambda(fn)
    compiled = check_against_eager(model, torch.randn(shape))
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "pad" in kinds
