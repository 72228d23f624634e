"""`depthwise_norm`: a depthwise conv whose only reader is a layer / RMS norm over its channels.

ConvNeXt's block starts with a 7x7 depthwise conv, permutes the result to [N, H, W, C] and
normalises every pixel over its channels. Unfused, the conv writes its whole activation and the
norm reads it back and writes it again; on the H100 these two were the largest part of
ConvNeXt-T's time at batch 128. optimize/fuse_depthwise_norm.py makes this layer of them;
triton_depthwise_norm.py computes it in one generated kernel that normalises the conv's FP32
tile in registers before the only write.

Inputs: [x ([N, C, H, W]), conv weight ([C, 1, KH, KW]), conv bias or None, norm weight or
None, norm bias or None]. Output: the norm's, [N, OH, OW, C].
attrs: "conv" ({"kind", "attrs"} of the conv or conv_epilogue: stride, padding, an activation),
"norm" (the norm layer's attrs: type "layer" or "rms", shape [C], eps), "conv_dtype" (the dtype
the conv wrote, which the unfused tactics keep), "fused_ops".

The reference runs the members through their own references, which is by construction what
the separate layers computed. The `*_unfused` tactics here run the conv on each kernel it had
before fusion (cuDNN, every Triton depthwise tile) and the norm on its row kernel: the builder
times them against the one-kernel tactics, so fusing never keeps a slower pair.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_depthwise
from kiln.engine.kernels.registry import REFERENCE, get_tactic, reference, tactic
from kiln.engine.kernels.triton_epilogue import LOW_PRECISION, apply_activation, fusable_activation, triton
from kiln.engine.kernels.triton_norm import row_norm
from kiln.engine.runtime.executor import arena_output

# The permute that puts the channels last, between the conv and the norm.
CHANNELS_LAST_DIMS = [0, 2, 3, 1]


def _member(kind: str, attrs: dict, inputs: list, run) -> torch.Tensor:
    return get_tactic(kind, REFERENCE).fn(Layer(kind, kind, [None] * len(inputs), [""], attrs), inputs, run)


def conv_inputs(layer: Layer, x, w, b) -> list:
    """The conv member's inputs as its kind takes them (a conv_epilogue's fourth is its residual, never present here)."""
    return [x, w, b] + ([None] if layer.attrs["conv"]["kind"] == "conv_epilogue" else [])


@reference("depthwise_norm")
def depthwise_norm_reference(layer, inputs, run):
    x, w, b, nw, nb = inputs
    conv = layer.attrs["conv"]
    y = _member(conv["kind"], conv["attrs"], conv_inputs(layer, x, w, b), run)
    return _member("norm", layer.attrs["norm"], [y.permute(*CHANNELS_LAST_DIMS), nw, nb, None, None], run)


def norm_of(layer: Layer, y: torch.Tensor, nw, nb, run) -> torch.Tensor:
    """The norm member on its row kernel (triton_norm.row_norm), y [N, C, H, W] read as [N, H, W, C] rows."""
    a = layer.attrs["norm"]
    rms = a["type"] == "rms"
    out = arena_output(run, 0)
    return row_norm(y.permute(*CHANNELS_LAST_DIMS), nw, None if rms else nb, run.shape(a["shape"]), a.get("eps"), rms, out)


def applies_on_gpu(layer, target) -> bool:
    """Low-precision CUDA layers: the Triton tactics' domain (as triton_depthwise's own `when`)."""
    conv = layer.attrs["conv"]["attrs"]
    return (
        triton is not None
        and target.is_cuda
        and layer.precision in ("float16", "bfloat16")
        and fusable_activation(conv.get("activation"))
    )


def conv_member(layer: Layer) -> Layer:
    """The conv member as a layer of its own, for what is written for convs (triton_depthwise's weight preparation)."""
    conv = layer.attrs["conv"]
    return Layer(conv["kind"], layer.name, conv_inputs(layer, *layer.inputs[:3]), layer.outputs, conv["attrs"], layer.precision)


def weight_as_taps(layer, weights: dict) -> dict:
    """The depthwise weight as [KH, KW, C], each tap's channels contiguous, as triton_depthwise prepares it."""
    return triton_depthwise.weight_as_taps(conv_member(layer), weights)


def _weight_nhwc(layer, weights: dict) -> dict:
    name = layer.inputs[1]
    return {name: weights[name].contiguous(memory_format=torch.channels_last)} if name in weights else {}


@tactic("depthwise_norm", "aten_unfused", when=applies_on_gpu, prepare=_weight_nhwc)
def depthwise_norm_cudnn_unfused(layer, inputs, run):
    """cuDNN's depthwise conv (its aten_nhwc tactic), the activation if any, then the norm's row kernel."""
    x, w, b, nw, nb = inputs
    a = layer.attrs["conv"]["attrs"]
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.convolution(x, w, b, a["stride"], a["padding"], a["dilation"], False, a["output_padding"], a["groups"])
    return norm_of(layer, apply_activation(y, a), nw, nb, run)


def _register_triton_unfused(name: str, config: tuple[int, int, int]) -> None:
    def unfused(layer, inputs, run):
        x, taps, b, nw, nb = inputs
        if x.dtype not in LOW_PRECISION:
            raise ValueError(f"{name} takes FP16/BF16 only")
        y = triton_depthwise.depthwise(x, taps, b, None, layer.attrs["conv"]["attrs"], None, config)
        return norm_of(layer, y, nw, nb, run)

    unfused.__doc__ = f"The Triton depthwise conv at tile {config} (its {name.removesuffix('_unfused')} tactic), then the row norm."
    tactic("depthwise_norm", name, when=applies_on_gpu, prepare=weight_as_taps)(unfused)


for _name, _config in triton_depthwise.CONFIGS.items():
    _register_triton_unfused(f"{_name}_unfused", _config)
