import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Lambda, check_against_eager

# name: (function of (x, weight, bias), input shape, weight shape)
CONVS = {
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b), (2, 4, 17), (6, 4, 3)),
    "conv1d_same_dilated": (lambda x, w, b: F.conv1d(x, w, b, padding="same", dilation=2), (2, 4, 17), (6, 4, 3)),
    "conv1d_stride_groups": (lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, groups=2), (2, 4, 17), (6, 2, 3)),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b), (2, 3, 11, 9), (8, 3, 3, 3)),
    "conv2d_stride_pad": (lambda x, w, b: F.conv2d(x, w, b, stride=(2, 3), padding=(1, 2)), (2, 3, 11, 9), (8, 3, 3, 3)),
    "conv2d_same": (lambda x, w, b: F.conv2d(x, w, b, padding="same"), (2, 3, 11, 9), (8, 3, 3, 5)),
    # An even kernel makes 'same' padding asymmetric: capture turns it into constant_pad_nd + conv.
    "conv2d_same_even_kernel": (lambda x, w, b: F.conv2d(x, w, b, padding="same"), (2, 3, 11, 9), (8, 3, 4, 4)),
    "conv2d_dilation": (lambda x, w, b: F.conv2d(x, w, b, padding=2, dilation=(2, 1)), (2, 3, 11, 9), (8, 3, 3, 3)),
    "conv2d_groups": (lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2), (2, 4, 10, 10), (6, 2, 3, 3)),
    "conv2d_depthwise": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=8), (2, 8, 10, 10), (8, 1, 3, 3)),
    "conv2d_depthwise_multiplier": (lambda x, w, b: F.conv2d(x, w, b, padding=2, groups=4), (2, 4, 10, 10), (8, 1, 5, 5)),
    "conv2d_no_bias": (lambda x, w, b: F.conv2d(x, w, None, padding=1), (2, 3, 8, 8), (8, 3, 3, 3)),
    "conv2d_1x1": (lambda x, w, b: F.conv2d(x, w, b), (2, 16, 7, 7), (32, 16, 1, 1)),
    "conv3d": (lambda x, w, b: F.conv3d(x, w, b, padding=1), (1, 3, 5, 6, 7), (4, 3, 3, 3, 3)),
    "conv_transpose1d": (lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1), (2, 4, 9), (4, 3, 3)),
    "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2), (2, 4, 7, 6), (4, 6, 3, 3)),
    "conv_transpose2d_output_padding": (
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
        (2, 4, 7, 6),
        (4, 6, 3, 3),
    ),
    "conv_transpose2d_groups_dilation": (
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride=(2, 1), padding=(0, 1), groups=2, dilation=2),
        (2, 4, 7, 6),
        (4, 3, 3, 3),
    ),
    "conv_transpose2d_no_bias": (lambda x, w, b: F.conv_transpose2d(x, w, None, stride=3, output_padding=2), (1, 4, 5, 5), (4, 2, 3, 3)),
}


def _out_channels(fn_name, w_shape):
    if "transpose" not in fn_name:
        return w_shape[0]
    groups = {"conv_transpose2d_groups_dilation": 2}.get(fn_name, 1)
    return w_shape[1] * groups


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_matches_eager(name):
    fn, x_shape, w_shape = CONVS[name]
    w = torch.randn(w_shape)
    b = torch.randn(_out_channels(name, w_shape))
    compiled = check_against_eager(Lambda(fn, w, b), torch.randn(x_shape))
    kinds = {layer[1] for layers in compiled.report.layers.values() for layer in layers}
    assert "conv" in kinds


def test_conv_module_with_batch_norm_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    check_against_eager(model, torch.randn(2, 3, 9, 9))
