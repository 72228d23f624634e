"""Convolution through cuDNN in NHWC (channels-last), weights made NHWC once at build time.

cuDNN runs FP16/BF16 convolutions on tensor cores in NHWC; an NCHW call pays a transpose of
the input and output around the kernel. The bias rides in the same cuDNN call (aten.convolution
passes it to cudnnConvolutionBiasActivationForward-style epilogues where it can).
"""

import torch

from kiln.engine.kernels.pointwise import UNARY_OPS
from kiln.engine.kernels.registry import reference, tactic


def _is_conv2d(layer, target) -> bool:
    return target.is_cuda and len(layer.attrs["stride"]) == 2


def _weight_nhwc(layer, weights: dict) -> dict:
    name = layer.inputs[1]
    if name not in weights:
        return {}
    return {name: weights[name].contiguous(memory_format=torch.channels_last)}


@tactic("conv", "aten_nhwc", when=_is_conv2d, prepare=_weight_nhwc)
def conv_nhwc(layer, inputs, run):
    x, w, b = inputs
    a = layer.attrs
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.convolution(x, w, b, a["stride"], a["padding"], a["dilation"], a["transposed"], a["output_padding"], a["groups"])


# --- conv_epilogue: conv + bias [+ residual] + activation, made by optimize/fuse_conv.py ---------


def _conv(x, w, b, a):
    return torch.convolution(x, w, b, a["stride"], a["padding"], a["dilation"], a["transposed"], a["output_padding"], a["groups"])


def _epilogue(y, residual, a):
    if residual is not None:
        y = y + residual
    return UNARY_OPS[a["activation"]](y, a)


@reference("conv_epilogue")
def conv_epilogue_reference(layer, inputs, run):
    x, w, b, residual = inputs
    return _epilogue(_conv(x, w, b, layer.attrs), residual, layer.attrs)


@tactic("conv_epilogue", "aten_nhwc", when=_is_conv2d, prepare=_weight_nhwc)
def conv_epilogue_nhwc(layer, inputs, run):
    x, w, b, residual = inputs
    y = _conv(x.contiguous(memory_format=torch.channels_last), w, b, layer.attrs)
    if residual is not None:
        y += residual
    return y.relu_() if layer.attrs["activation"] == "relu" else _epilogue(y, None, layer.attrs)


def _cudnn_fusable(layer, target) -> bool:
    return _is_conv2d(layer, target) and layer.attrs["activation"] == "relu" and not layer.attrs["transposed"]


@tactic("conv_epilogue", "cudnn_fused", when=_cudnn_fusable, prepare=_weight_nhwc)
def conv_epilogue_cudnn(layer, inputs, run):
    # One cuDNN kernel for conv + bias (+ residual) + ReLU.
    x, w, b, residual = inputs
    a = layer.attrs
    x = x.contiguous(memory_format=torch.channels_last)
    if residual is None:
        return torch.cudnn_convolution_relu(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"])
    residual = residual.contiguous(memory_format=torch.channels_last)
    return torch.cudnn_convolution_add_relu(x, w, residual, 1.0, b, a["stride"], a["padding"], a["dilation"], a["groups"])
