"""Zero-copy data movement: permute/select/slice/reshape layers whose readers accept strided tensors become views.

The reference tactics of these kinds copy into a dense tensor, which a transformer pays for on
every head split (qkv.reshape(...).permute(...).unbind(0) moves the whole qkv activation once
more). PyTorch's matmul, SDPA, norm, softmax and pointwise kernels read strided tensors
directly, so where every reader is one of those, the copy buys nothing. Conv tactics ask for
channels-last memory, which ConvNeXt's permute back from NHWC already is: no copy either. This pass marks such
layers `view_ok`; kernels/aten_view.py then has a view tactic for them, which the builder
times (it costs no kernel at all) against the copying reference.

A reader kind belongs in STRIDE_TOLERANT only if every tactic registered for it reads its
inputs by strides (all ATen-backed ones do); a tactic that needs dense inputs must call
.contiguous() itself or its kind must leave this set. Network outputs are never views.
"""

from __future__ import annotations

from kiln.engine.ir.network import Network
from kiln.engine.optimize import OptimizeContext, optimize_pass

VIEWABLE = frozenset({"permute", "select", "slice", "reshape"})
STRIDE_TOLERANT = frozenset(
    {"attention", "linear", "matmul", "binary", "unary", "norm", "softmax", "reduce", "fused_pointwise", "conv", "conv_epilogue"}
    | {"reshape", "permute", "select", "slice", "cast", "concat", "fused_reduction"}
    # F.*pool2d reads strides; the NHWC Triton pool transposes an input that is not NHWC in memory.
    | {"pool", "index_select"}
    # The depthwise conv + norm tactics take any strides (the conv ones make the input channels-last, as conv's do).
    | {"depthwise_norm"}
)


@optimize_pass
def mark_views(network: Network, ctx: OptimizeContext) -> Network:
    if ctx.settings.device.type != "cuda":
        return network
    readers = network.consumers()
    outputs = set(network.outputs)
    for layer in network.layers:
        if layer.kind not in VIEWABLE or any(o in outputs for o in layer.outputs):
            continue
        users = [u for o in layer.outputs for u in readers.get(o, [])]
        if users and all(u.kind in STRIDE_TOLERANT for u in users):
            layer.attrs["view_ok"] = True
    return network
