"""Input-scale fusion: x * s feeding a 1x1 conv becomes the conv's prologue.

Squeeze-excite blocks (EfficientNet, MobileNetV3, RegNetY, ReXNet, GhostNet...) end in
`x * sigmoid(se(x))[:, :, None, None]` followed by the 1x1 projection. As separate layers the
multiply reads and writes the whole activation once more and costs a launch; fused, the GEMM
scales each row of its A tile by its image's channel scale as it loads it
(kernels/triton_gemm.py), so the scaled activation never exists.

A `binary mul` of x ([N, C, H, W]) by s ([N or 1, C, 1, 1]) whose only reader is a 1x1,
stride-1, ungrouped conv reading it as its input becomes that conv's `scaled_input`: the conv
reads x, s is appended to its inputs. Tactics that take an input scale (kernels/registry.py)
are the references and cuDNN, which multiply first as before, and the Triton 1x1 GEMM, which
does it in its prologue; the builder times them. Runs after precision assignment (the multiply's
dtype is final) and before pointwise fusion (which would otherwise take the multiply).
"""

from __future__ import annotations

from kiln.engine.ir.network import Layer, Network
from kiln.engine.optimize import cuda_pass

CONVS = frozenset({"conv", "conv_epilogue"})


@cuda_pass("fuse_input_scale")
def fuse_input_scales(network: Network) -> Network:
    readers = network.consumers()
    gone: set[str] = set()
    for layer in network.layers:
        parts = _scaled_input(network, layer)
        if parts is None:
            continue
        users = readers.get(layer.outputs[0], [])
        if len(users) != 1 or layer.outputs[0] in network.outputs:
            continue
        conv = users[0]
        if not _takes_scale(network, conv, layer.outputs[0]):
            continue
        x, scale = parts
        conv.inputs = [x, *conv.inputs[1:], scale]
        conv.attrs["scaled_input"] = True
        conv.source = " + ".join(s for s in (layer.source, conv.source) if s)
        gone.add(layer.name)
    if gone:
        network.layers = [layer for layer in network.layers if layer.name not in gone]
    return network


def _scaled_input(network: Network, layer: Layer) -> tuple[str, str] | None:
    """(x, s) if the layer is x * s with s a per-image channel scale of x, else None."""
    if layer.kind != "binary" or layer.attrs.get("op") != "mul" or layer.attrs.get("alpha", 1) != 1 or None in layer.inputs:
        return None
    out = network.tensors[layer.outputs[0]]
    if out.rank != 4:
        return None
    for x, s in (layer.inputs, layer.inputs[::-1]):
        xd, sd = network.tensors[x], network.tensors[s]
        n, c = out.shape[0], out.shape[1]
        if list(xd.shape) == list(out.shape) and sd.rank == 4 and sd.shape[0] in (n, 1) and list(sd.shape[1:]) == [c, 1, 1]:
            if xd.dtype == sd.dtype == out.dtype:
                return x, s
    return None


def _takes_scale(network: Network, conv: Layer, value: str) -> bool:
    a = conv.attrs
    if conv.kind not in CONVS or a.get("scaled_input") or conv.inputs[0] != value or value in conv.inputs[1:]:
        return False
    weight = network.tensors[conv.inputs[1]]
    return (
        not a.get("transposed")
        and a.get("groups") == 1
        and list(a.get("stride", [])) == [1, 1]
        and list(a.get("padding", [])) == [0, 0]
        and list(weight.shape[2:]) == [1, 1]
    )
