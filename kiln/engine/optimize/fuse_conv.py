"""Conv epilogue fusion: conv → [+ residual] → [activation] becomes one `conv_epilogue` layer.

cuDNN runs conv + bias + ReLU, and conv + bias + residual add + ReLU, as one kernel
(torch.cudnn_convolution_relu / cudnn_convolution_add_relu): the activation is applied while
the output tile is still in registers, so the separate ReLU and add kernels, and their trips
through memory, disappear. ResNet's bottleneck blocks are exactly these two patterns. For 1x1
convs a Triton GEMM (kernels/triton_gemm_1x1.py) also fuses SiLU, hardswish, sigmoid and
ReLU6, and a residual add without activation: EfficientNet's and MobileNet's expand and
project convs. Whether a fused kernel is faster than the separate ones is measured per layer
by the builder (a conv_epilogue can always run as the conv plus the ops it absorbed); the
fusion only makes the choice possible.

Patterns are data (CONV_EPILOGUES); a match requires each intermediate to have exactly one
reader and not be a network output, so nothing else sees the values that stop existing.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.engine.ir.network import Layer, Network
from kiln.engine.optimize import OptimizeContext, optimize_pass


@dataclass(frozen=True)
class Epilogue:
    name: str
    residual: bool
    activation: str | None


# Longest first: a conv followed by add + relu must not be taken as conv + add.
CONV_EPILOGUES = [
    Epilogue("conv_add_relu", residual=True, activation="relu"),
    *(Epilogue(f"conv_{act}", residual=False, activation=act) for act in ("relu", "silu", "hardswish", "sigmoid", "relu6")),
    Epilogue("conv_add", residual=True, activation=None),
]


@optimize_pass
def fuse_conv_epilogues(network: Network, ctx: OptimizeContext) -> Network:
    if ctx.settings.device.type != "cuda":
        return network
    readers = network.consumers()
    fused_away: set[str] = set()
    replacement: dict[str, Layer] = {}
    for layer in network.layers:
        if layer.kind != "conv" or layer.attrs.get("transposed") or len(layer.attrs["stride"]) != 2:
            continue
        for pattern in CONV_EPILOGUES:
            match = _match(network, readers, layer, pattern)
            if match is not None:
                fused, consumed = match
                replacement[layer.name] = fused
                fused_away |= consumed
                break
    if replacement:
        network.layers = [replacement.get(layer.name, layer) for layer in network.layers if layer.name not in fused_away]
    return network


def _only_reader(network: Network, readers: dict, tensor: str) -> Layer | None:
    users = readers.get(tensor, [])
    if len(users) != 1 or tensor in network.outputs:
        return None
    return users[0]


def _match(network: Network, readers: dict, conv: Layer, pattern: Epilogue):
    out = conv.outputs[0]
    residual = None
    consumed = []
    nxt = _only_reader(network, readers, out)
    if nxt is None:
        return None
    if pattern.residual:
        if nxt.kind != "binary" or nxt.attrs.get("op") != "add" or nxt.attrs.get("alpha", 1) != 1 or None in nxt.inputs:
            return None
        other = [n for n in nxt.inputs if n != out]
        if len(other) != 1 or list(network.tensors[other[0]].shape) != list(network.tensors[out].shape):
            return None
        if network.tensors[other[0]].dtype != network.tensors[out].dtype:
            return None
        residual = other[0]
        consumed.append(nxt)
        if pattern.activation is not None:
            nxt = _only_reader(network, readers, nxt.outputs[0])
            if nxt is None:
                return None
    if pattern.activation is not None:
        if nxt.kind != "unary" or nxt.attrs.get("op") != pattern.activation:
            return None
        consumed.append(nxt)
    # The residual must exist before the conv runs, since the fused layer takes the conv's place.
    order = {layer.name: i for i, layer in enumerate(network.layers)}
    producer = network.producer()
    if residual is not None and residual in producer and order[producer[residual].name] > order[conv.name]:
        return None
    x, w, b = conv.inputs
    attrs = {**conv.attrs, "activation": pattern.activation, "residual": residual is not None}
    fused = Layer(
        "conv_epilogue",
        conv.name,
        [x, w, b, residual],
        [nxt.outputs[0]],
        attrs,
        conv.precision,
        " + ".join(s for s in (conv.source, *(c.source for c in consumed)) if s),
    )
    return fused, {c.name for c in consumed}
