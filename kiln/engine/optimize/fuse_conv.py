"""Conv epilogue fusion: conv → [+ residual] → [activation] becomes one `conv_epilogue` layer.

cuDNN runs conv + bias + ReLU, and conv + bias + residual add + ReLU, as one kernel
(torch.cudnn_convolution_relu / cudnn_convolution_add_relu): the activation is applied while
the output tile is still in registers, so the separate ReLU and add kernels, and their trips
through memory, disappear. ResNet's bottleneck blocks are exactly these two patterns. The
Triton templates (1x1 GEMM, depthwise) fuse any activation of the op vocabulary and a
residual add through the generated epilogue (kernels/triton_epilogue.py), and after a cuDNN
conv the same epilogue runs as one generated in-place kernel. Whether a fused kernel is faster than the separate ones is measured per layer
by the builder (a conv_epilogue can always run as the conv plus the ops it absorbed); the
fusion only makes the choice possible.

Patterns are data (CONV_EPILOGUES); a match requires each intermediate to have exactly one
reader and not be a network output, so nothing else sees the values that stop existing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.codegen.program import is_generatable
from kiln.engine.optimize import OptimizeContext, optimize_pass
from kiln.engine.optimize.precision import keep_fp32_reason


@dataclass(frozen=True)
class Epilogue:
    name: str
    residual: bool
    activation: bool


# Longest first: a conv followed by add + activation must not be taken as conv + add. The
# activation may be any unary op the generated epilogue has a Triton form for (the op
# vocabulary, kernels/pointwise.py UNARY_TRITON): one list for every template and tactic.
CONV_EPILOGUES = [
    Epilogue("conv_add_activation", residual=True, activation=True),
    Epilogue("conv_activation", residual=False, activation=True),
    Epilogue("conv_add", residual=True, activation=False),
]


@optimize_pass
def fuse_conv_epilogues(network: Network, ctx: OptimizeContext) -> Network:
    if ctx.settings.device.type != "cuda":
        return network
    graph = _Graph(network)
    fused_away: set[str] = set()
    replacement: dict[str, Layer] = {}
    for layer in network.layers:
        if layer.kind != "conv" or layer.attrs.get("transposed") or len(layer.attrs["stride"]) != 2:
            continue
        for pattern in CONV_EPILOGUES:
            match = _match(graph, layer, pattern)
            if match is not None:
                fused, consumed = match
                replacement[layer.name] = fused
                fused_away |= consumed
                break
    if replacement:
        network.layers = [replacement.get(layer.name, layer) for layer in network.layers if layer.name not in fused_away]
    return network


class _Graph:
    """Who reads and who writes each tensor, and the layer order: computed once for every match."""

    def __init__(self, network: Network):
        self.network = network
        self.readers = network.consumers()
        self.producer = network.producer()
        self.order = {layer.name: i for i, layer in enumerate(network.layers)}

    def only_reader(self, tensor: str) -> Layer | None:
        users = self.readers.get(tensor, [])
        if len(users) != 1 or tensor in self.network.outputs:
            return None
        return users[0]

    def residual_of(self, add: Layer | None, out: str) -> str | None:
        """The other operand of `add` if it is out + a tensor of out's shape and dtype, made before `out`'s conv."""
        if add is None or add.kind != "binary" or add.attrs.get("op") != "add" or add.attrs.get("alpha", 1) != 1 or None in add.inputs:
            return None
        other = [n for n in add.inputs if n != out]
        if len(other) != 1:
            return None
        tensors = self.network.tensors
        if list(tensors[other[0]].shape) != list(tensors[out].shape) or tensors[other[0]].dtype != tensors[out].dtype:
            return None
        # The residual must exist before the conv runs, since the fused layer takes the conv's place.
        made_by = self.producer.get(other[0])
        if made_by is not None and self.order[made_by.name] > self.order[self.producer[out].name]:
            return None
        return other[0]


def _match(graph: _Graph, conv: Layer, pattern: Epilogue):
    """Follow conv's output through the pattern's add and activation; the fused layer writes the chain's last output."""
    last = conv.outputs[0]
    residual = None
    consumed: list[Layer] = []
    if pattern.residual:
        add = graph.only_reader(last)
        residual = graph.residual_of(add, last)
        if residual is None:
            return None
        consumed.append(add)
        last = add.outputs[0]
    activation = None
    if pattern.activation:
        act = graph.only_reader(last)
        # An activation an FP32 rule would keep wide (exp overflows FP16) stays its own layer.
        if act is None or act.kind != "unary" or not is_generatable(act) or keep_fp32_reason(act, graph.network, torch.float16):
            return None
        consumed.append(act)
        last = act.outputs[0]
        activation = act.attrs
    x, w, b = conv.inputs
    attrs = {**conv.attrs, "activation": activation["op"] if activation else None, "residual": residual is not None}
    if activation and len(activation) > 1:
        attrs["activation_attrs"] = {k: v for k, v in activation.items() if k != "op"}
    fused = Layer(
        "conv_epilogue",
        conv.name,
        [x, w, b, residual],
        [last],
        attrs,
        conv.precision,
        " + ".join(s for s in (conv.source, *(c.source for c in consumed)) if s),
    )
    return fused, {c.name for c in consumed}
