"""Depthwise conv + norm over its channels: the pair becomes one `depthwise_norm` layer.

ConvNeXt's block (timm's and torchvision's alike) converts to a depthwise conv, a permute to
[N, H, W, C], and a layer norm over the last dim: the conv writes its activation, the norm reads
it back and writes it again. Fused (kernels/depthwise_norm.py), one generated kernel
normalises the conv's FP32 tile in registers before its only write (triton_depthwise_norm.py).

A pair qualifies when:
- the conv is a 2-D `conv` (or a `conv_epilogue` without residual) with one filter per channel
  (groups == input channels == output channels, weight [C, 1, KH, KW] known at build time), no
  input scale, computing in FP16/BF16;
- its output has one reader, a `permute` with dims [0, 2, 3, 1], whose output has one reader, a
  plain `norm` (type layer or rms, over [C], no running statistics) of the same dtype; neither
  value is a network output;
- the channels fit one program (triton_depthwise_norm.fits).
The fused layer takes the norm's place. A norm that fuse_reductions gave a prologue or epilogue
is a `fused_reduction` by now and stays as it is (this pass runs after it). The builder times the
one-kernel tactics against the conv and norm run one after another on each kernel the conv had
before (kernels/depthwise_norm.py's *_unfused tactics), so fusing never keeps a slower pair.
"""

from __future__ import annotations

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.depthwise_norm import CHANNELS_LAST_DIMS
from kiln.engine.kernels.triton_depthwise_norm import fits
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.fuse_pointwise import member_ops
from kiln.engine.optimize.precision import with_fp32_members
from kiln.engine.optimize.replace_groups import only_reader, replace_groups

LOW_PRECISION = ("float16", "bfloat16")
# Large images are left as the unfused pair: on the H100 at ConvNeXt-T batch 128 the best fused config took
# 586 us (stage 1) and 298 us (stage 2) against 439 and 244 for cuDNN or Triton depthwise + the row norm
# (benchmarks/kernel_sweep.py dwln), and each candidate is a long Triton compile at build time. Small
# images (batch 1 to a few) keep the fusion, where one launch fewer is worth most.
MAX_FUSED_PIXELS = 16384


@cuda_pass("fuse_depthwise_norm")
def fuse_depthwise_norms(network: Network) -> Network:
    fusions = []
    for layer in network.layers:
        if layer.kind in ("conv", "conv_epilogue"):
            match = _match(network, layer)
            if match is not None:
                fused, members = match
                fusions.append((members, fused))
    return replace_groups(network, fusions)


def _match(network: Network, conv: Layer) -> tuple[Layer, list[Layer]] | None:
    readers = network.consumers()
    if not _is_depthwise(network, conv):
        return None
    permute = only_reader(network, readers, conv.outputs[0])
    if permute is None or permute.kind != "permute" or list(permute.attrs.get("dims", [])) != CHANNELS_LAST_DIMS:
        return None
    norm = only_reader(network, readers, permute.outputs[0])
    channels = network.tensors[conv.outputs[0]].shape[1]
    if norm is None or not _is_channel_norm(network, norm, permute.outputs[0], channels):
        return None
    members = [conv, permute, norm]
    attrs = {
        "conv": {"kind": conv.kind, "attrs": {k: v for k, v in conv.attrs.items() if k != "view_ok"}},
        "norm": dict(norm.attrs),
        "conv_dtype": dtype_name(network.tensors[conv.outputs[0]].dtype),
        "fused_ops": [op for m in members for op in member_ops(m)],
    }
    inputs = [*conv.inputs[:3], *norm.inputs[1:3]]
    source = " + ".join(m.source for m in members if m.source)
    fused = Layer("depthwise_norm", norm.name, inputs, list(norm.outputs), with_fp32_members(attrs, members), conv.precision, source)
    return fused, members


def _is_depthwise(network: Network, conv: Layer) -> bool:
    a, tensors = conv.attrs, network.tensors
    if len(conv.inputs) < 3 or conv.inputs[0] is None or conv.inputs[1] not in network.constants or len(conv.outputs) != 1:
        return False
    if conv.kind == "conv_epilogue" and (a.get("residual") or (len(conv.inputs) > 3 and conv.inputs[3] is not None)):
        return False
    x, w, y = tensors[conv.inputs[0]], tensors[conv.inputs[1]], tensors[conv.outputs[0]]
    pixels = y.shape[0] * y.shape[2] * y.shape[3] if y.rank == 4 and all(isinstance(d, int) for d in y.shape) else None
    return (
        pixels is not None
        and pixels <= MAX_FUSED_PIXELS
        and conv.precision in LOW_PRECISION
        and x.rank == 4
        and len(a.get("stride", [])) == 2
        and not a.get("transposed")
        and not a.get("scaled_input")
        and isinstance(x.shape[1], int)
        and a.get("groups") == x.shape[1] == w.shape[0] == y.shape[1]
        and w.rank == 4
        and w.shape[1] == 1
        and dtype_name(y.dtype) in LOW_PRECISION
        and fits(x.shape[1])
    )


def _is_channel_norm(network: Network, norm: Layer, value: str, channels: int) -> bool:
    a = norm.attrs
    if norm.kind != "norm" or a.get("type") not in ("layer", "rms") or list(a.get("shape") or []) != [channels]:
        return False
    if norm.inputs[0] != value or value in norm.inputs[1:] or any(n is not None for n in norm.inputs[3:]):
        return False
    return network.tensors[norm.outputs[0]].dtype == network.tensors[value].dtype
