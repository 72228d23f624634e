"""Convolution through cuDNN in NHWC (channels-last), weights made NHWC once at build time.

cuDNN runs FP16/BF16 convolutions on tensor cores in NHWC; an NCHW call pays a transpose of
the input and output around the kernel. The bias rides in the same cuDNN call (aten.convolution
passes it to cudnnConvolutionBiasActivationForward-style epilogues where it can).
"""

import torch

from kiln.engine.kernels.conv import scale_input
from kiln.engine.kernels.registry import reference, tactic
from kiln.engine.kernels.triton_epilogue import apply_activation, finish_in_place


def _is_conv2d(layer, target) -> bool:
    return target.is_cuda and len(layer.attrs["stride"]) == 2


def _weight_nhwc(layer, weights: dict) -> dict:
    name = layer.inputs[1]
    if name not in weights:
        return {}
    return {name: weights[name].contiguous(memory_format=torch.channels_last)}


@tactic("conv", "aten_nhwc", when=_is_conv2d, prepare=_weight_nhwc, takes=("scaled_input",))
def conv_nhwc(layer, inputs, run):
    x, w, b = scale_input(layer, inputs)
    a = layer.attrs
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.convolution(x, w, b, a["stride"], a["padding"], a["dilation"], a["transposed"], a["output_padding"], a["groups"])


# --- conv_epilogue: conv + bias [+ residual] + activation, made by optimize/fuse_conv.py ---------


def _conv(x, w, b, a):
    return torch.convolution(x, w, b, a["stride"], a["padding"], a["dilation"], a["transposed"], a["output_padding"], a["groups"])


def _epilogue(y, residual, a):
    if residual is not None:
        y = y + residual
    return apply_activation(y, a)


@reference("conv_epilogue", takes=("scaled_input",))
def conv_epilogue_reference(layer, inputs, run):
    x, w, b, residual = scale_input(layer, inputs)
    return _epilogue(_conv(x, w, b, layer.attrs), residual, layer.attrs)


@tactic("conv_epilogue", "aten_nhwc", when=_is_conv2d, prepare=_weight_nhwc, takes=("scaled_input",))
def conv_epilogue_nhwc(layer, inputs, run):
    x, w, b, residual = scale_input(layer, inputs)
    y = _conv(x.contiguous(memory_format=torch.channels_last), w, b, layer.attrs)
    # y is this layer's own fresh output: residual and activation overwrite it in one generated pass.
    return finish_in_place(y, residual, layer.attrs)


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


# --- convolutions that are GEMMs --------------------------------------------------------------
# A 1x1 stride-1 conv over NHWC memory is a [N*H*W, Cin] x [Cin, Cout] GEMM on the same bytes,
# and a conv whose stride equals its kernel with no padding (ViT's patch embedding) is a GEMM
# over non-overlapping patches. cuBLAS runs both near memory/tensor-core speed where cuDNN's
# general kernels can be several times slower (few input channels, 16x16 kernels).


def is_pointwise_conv(layer, target) -> bool:
    a = layer.attrs
    return (
        _is_conv2d(layer, target)
        and not a["transposed"]
        and a["groups"] == 1
        and a["stride"] == [1, 1]
        and a["padding"] == [0, 0]
    )


def _as_matrix(w: torch.Tensor) -> torch.Tensor:
    # [Cout, Cin, kh, kw] -> [kh*kw*Cin, Cout]: the patch's (kh, kw, Cin) order matches NHWC memory.
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()


def weight_as_gemm_1x1(layer, weights: dict) -> dict:
    name = layer.inputs[1]
    if name not in weights or tuple(weights[name].shape[2:]) != (1, 1):
        raise ValueError("gemm_1x1 needs a 1x1 kernel known at build time")
    return {name: _as_matrix(weights[name])}


def _weight_patches(layer, weights: dict) -> dict:
    name = layer.inputs[1]
    if name not in weights or list(weights[name].shape[2:]) != layer.attrs["stride"]:
        raise ValueError("gemm_patchify needs kernel == stride and a kernel known at build time")
    return {name: _as_matrix(weights[name])}


def _gemm_nhwc(x_rows, w_mat, b, n, h, w):
    out = torch.addmm(b, x_rows, w_mat) if b is not None else torch.mm(x_rows, w_mat)
    return out.view(n, h, w, w_mat.shape[1]).permute(0, 3, 1, 2)


@tactic("conv", "gemm_1x1", when=is_pointwise_conv, prepare=weight_as_gemm_1x1, takes=("scaled_input",))
def conv_1x1_gemm(layer, inputs, run):
    x, w_mat, b = scale_input(layer, inputs)
    if w_mat.dim() != 2 or w_mat.shape[0] != x.shape[1]:
        raise ValueError("gemm_1x1 runs only with the weight its prepare made")
    n, c, h, w = x.shape
    rows = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, c)
    return _gemm_nhwc(rows, w_mat, b, n, h, w)


def _is_patchify(layer, target) -> bool:
    a = layer.attrs
    return (
        _is_conv2d(layer, target)
        and not a["transposed"]
        and a["groups"] == 1
        and a["padding"] == [0, 0]
        and a["dilation"] == [1, 1]
        and a["stride"] != [1, 1]
    )


@tactic("conv", "gemm_patchify", when=_is_patchify, prepare=_weight_patches)
def conv_patchify_gemm(layer, inputs, run):
    x, w_mat, b = inputs
    sh, sw = layer.attrs["stride"]
    n, c, h, w = x.shape
    if w_mat.dim() != 2 or w_mat.shape[0] != sh * sw * c or h % sh or w % sw:
        raise ValueError("gemm_patchify runs only with the weight its prepare made, on sizes divisible by the stride")
    gh, gw = h // sh, w // sw
    # [N, C, gh, sh, gw, sw] -> [N, gh, gw, sh, sw, C]: one row per patch, in the weight's (kh, kw, Cin) order.
    rows = x.reshape(n, c, gh, sh, gw, sw).permute(0, 2, 4, 3, 5, 1).reshape(n * gh * gw, sh * sw * c)
    return _gemm_nhwc(rows, w_mat, b, n, gh, gw)
