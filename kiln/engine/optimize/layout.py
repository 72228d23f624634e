"""Layout assignment: NHWC (channels-last) across conv / pointwise / pool chains on CUDA.

cuDNN's FP16/BF16 convolutions run on tensor cores in NHWC; given NCHW they transpose on
the way in and out. PyTorch's pointwise and pooling kernels keep the memory format of their
input, so one NHWC region costs no conversions inside it: only where it meets a layer that
needs NCHW order (reshape/flatten, permute) does `.contiguous()` transpose once.

The pass marks TensorDesc.layout; the runtime allocates NHWC static input buffers for inputs
that feed a conv (the copy into them does the transpose for free), and the conv tactics keep
their weights NHWC (kernels/aten_conv.py). Layouts never change results, only speed: every
tactic reads a tensor by its logical indices.
"""

from __future__ import annotations

from kiln.engine.ir.network import Network
from kiln.engine.ir.tensor import Layout
from kiln.engine.optimize import OptimizeContext, optimize_pass
from kiln.engine.optimize.fuse_pointwise import joins_pieces
from kiln.engine.optimize.precision import FLOATS

# Kinds whose PyTorch kernels keep an NHWC input NHWC (same-shape pointwise, pooling, norms over channels).
CONVS = frozenset({"conv", "conv_epilogue"})
POINTWISE = frozenset({"unary", "binary", "cast", "copy", "where", "fused_pointwise"})
# A channel split or concat of NHWC tensors keeps NHWC (CSP and dense blocks split and join between convs).
KEEPS_LAYOUT = POINTWISE | {"pool", "max_pool", "avg_pool", "adaptive_avg_pool", "pad", "fused_reduction", "split", "concat"}
# Norms over the channels (and the pixels) keep NHWC; a layer/RMS norm over the last dims does not. PoolFormer's
# group norm written NCHW between NHWC layers cost it transposed stores in the norm and a copy in the next pool:
# its b128 engine call took 7.3 ms on the H100 where its layers summed to 4.0.
CHANNEL_NORMS = frozenset({"batch", "batch_stats", "group", "instance"})


@optimize_pass
def assign_channels_last(network: Network, ctx: OptimizeContext) -> Network:
    if ctx.settings.device.type != "cuda":
        return network
    mark_channels_last(network)
    return network


def mark_channels_last(network: Network) -> None:
    tensors = network.tensors

    def nhwc_able(name: str | None) -> bool:
        return name is not None and tensors[name].rank == 4 and tensors[name].dtype in FLOATS

    producer = network.producer()
    for layer in network.layers:
        if layer.kind in CONVS and nhwc_able(layer.inputs[0]):
            x = layer.inputs[0]
            # A network input (or its boundary cast) feeding a conv is made NHWC by the input copy.
            if x in network.inputs:
                tensors[x].layout = Layout.CHANNELS_LAST
            elif producer[x].kind == "cast" and producer[x].inputs[0] in network.inputs and nhwc_able(producer[x].inputs[0]):
                tensors[producer[x].inputs[0]].layout = Layout.CHANNELS_LAST
                tensors[x].layout = Layout.CHANNELS_LAST
            for out in layer.outputs:
                if nhwc_able(out):
                    tensors[out].layout = Layout.CHANNELS_LAST
        elif layer.kind in KEEPS_LAYOUT or layer.kind == "norm" and layer.attrs.get("type") in CHANNEL_NORMS:
            nhwc_inputs = [n for n in layer.inputs if nhwc_able(n) and tensors[n].layout == Layout.CHANNELS_LAST]
            for out in layer.outputs:
                # A pointwise op keeps NHWC when its output has the shape of an NHWC input (not a broadcast
                # of a smaller one); pooling changes H and W but keeps the format, and a fused group that
                # reads a concat's NHWC pieces in place writes the joined values NHWC, as the concat would.
                same_shape = any(list(tensors[out].shape) == list(tensors[n].shape) for n in nhwc_inputs)
                if nhwc_able(out) and nhwc_inputs and (same_shape or layer.kind not in POINTWISE or joins_pieces(layer)):
                    tensors[out].layout = Layout.CHANNELS_LAST
