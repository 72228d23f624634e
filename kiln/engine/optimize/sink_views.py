"""Sinking views below element-wise readers: `a → view → pointwise` becomes `a → pointwise → view`.

An element-wise layer computes the same values in any index order, so it may run in the index
space of the view's input instead, with its other operands read through the inverse view, and
the view applied to its result. Two places pay for that:
- a view between a GEMM and the element-wise work after it (ConvNeXt's permute back to NCHW
  before the layer-scale multiply and residual add) hides that work from the GEMM epilogue;
  once sunk, fuse_gemm_epilogue sees linear → pointwise directly. The residual is read through
  the inverse permute, which for ConvNeXt's channels-last residual is the NHWC tensor as it lies;
- a reshape that merges dims a permute moved (Swin's window reverse before the residual add) is a
  copy; the element-wise reader reads the permuted tensor through its strides instead and writes
  a dense result that the reshape then only views.

Sinkable views: permute, and reshape where it only splits and merges groups of adjacent dims
(then each operand maps group by group: a group it broadcasts over stays broadcast, a group it
spans is split or merged the same way; an operand that spans part of a group cannot follow).
Constant operands are rewritten in place of the view (a new constant); activation operands get
an inverse view layer of their own, which mark_views makes zero-copy where its readers allow.
Shapes, dtypes and broadcasting are kept: only where the work happens moves.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.symbolic import Dim, is_static
from kiln.engine.ir.tensor import TensorDesc
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.fuse_gemm_epilogue import GEMM_KINDS
from kiln.engine.optimize.fuse_pointwise import _fusable, joins_pieces

SINKABLE = frozenset({"permute", "reshape"})


@cuda_pass("sink_views")
def sink_view_layers(network: Network) -> Network:
    # One sink can expose another (a reshape, then the permute above it, before the same reader).
    while any(_sink_one(network, view) for view in list(network.layers) if view.kind in SINKABLE):
        pass
    return network


def _sink_one(network: Network, view: Layer) -> bool:
    readers = network.consumers()
    out = view.outputs[0]
    users = readers.get(out, [])
    if out in network.outputs or len(users) != 1 or not _elementwise(users[0], network):
        return False
    reader = users[0]
    if len(reader.outputs) != 1 or reader.inputs.count(out) != 1:
        return False
    full = list(network.tensors[reader.outputs[0]].shape)
    if full != list(network.tensors[out].shape) or not _worth_sinking(network, view, readers):
        return False
    source = view.inputs[0]
    mapping = _operand_map(view, list(network.tensors[source].shape), full)
    if mapping is None:
        return False
    added: list[Layer] = []
    inputs: list[str | None] = []
    for name in reader.inputs:
        if name is None or name == out:
            inputs.append(source if name == out else None)
            continue
        mapped = _map_operand(network, name, full, mapping, added)
        if mapped is None:
            return False
        inputs.append(mapped)
    result = network.tensors[reader.outputs[0]]
    inner = TensorDesc(network.new_name(f"{reader.name}_unviewed"), list(network.tensors[source].shape), result.dtype)
    network.tensors[inner.name] = inner
    moved = Layer(reader.kind, reader.name, inputs, [inner.name], reader.attrs, reader.precision, reader.source)
    after = Layer(view.kind, network.new_name(view.name), [inner.name], [result.name], dict(view.attrs), view.precision, view.source)
    layers = []
    for layer in network.layers:
        if layer is view:
            continue
        if layer is reader:
            layers += [*added, moved, after]
        else:
            layers.append(layer)
    network.layers = layers
    return True


def _elementwise(layer: Layer, network: Network) -> bool:
    return (layer.kind == "fused_pointwise" and not joins_pieces(layer)) or _fusable(layer, network)


def _worth_sinking(network: Network, view: Layer, readers) -> bool:
    """Sinking pays where it lets a GEMM take the reader as its epilogue, or where the view would copy."""
    made_by = network.producer().get(view.inputs[0])
    if made_by is None:
        return False
    if made_by.kind in GEMM_KINDS and not made_by.attrs.get("epilogue") and len(readers[view.inputs[0]]) == 1:
        return True
    return view.kind == "reshape" and made_by.kind == "permute" and _reshape_copies(network, made_by, view)


def _reshape_copies(network: Network, permute: Layer, reshape: Layer) -> bool:
    """Whether reshaping a permute of a dense tensor needs a copy (the merged dims are not adjacent in memory)."""
    before = list(network.tensors[permute.inputs[0]].shape)
    after = list(network.tensors[reshape.outputs[0]].shape)
    if not (is_static(before) and is_static(after)):
        return False
    try:
        torch.empty(before, device="meta").permute(permute.attrs["dims"]).view(after)
    except RuntimeError:
        return True
    return False


def _operand_map(view: Layer, source: list[Dim], viewed: list[Dim]):
    """How an operand broadcast to `viewed` maps into `source`'s index space: a function of its padded shape."""
    if view.kind == "permute":
        inverse = [0] * len(view.attrs["dims"])
        for k, d in enumerate(view.attrs["dims"]):
            inverse[d] = k

        def through_permute(shape: list[Dim]):
            return [shape[k] for k in inverse], ("permute", inverse)

        return through_permute
    groups = reshape_groups(source, viewed)
    if groups is None:
        return None

    def through_reshape(shape: list[Dim]):
        mapped: list[Dim] = []
        for src, dst in groups:
            spanned = [shape[k] for k in dst]
            if all(s == 1 for s in spanned):
                mapped += [1] * len(src)
            elif spanned == [viewed[k] for k in dst]:
                mapped += [source[k] for k in src]
            else:
                return None
        return mapped, ("reshape", mapped)

    return through_reshape


def reshape_groups(source: list[Dim], viewed: list[Dim]) -> list[tuple[list[int], list[int]]] | None:
    """Pairs of adjacent-dim groups with equal sizes: the reshape splits or merges within each, or None.

    Equal leading and trailing dims (symbolic ones included) pair one to one; the dims between must be static."""
    lead = 0
    while lead < min(len(source), len(viewed)) and source[lead] == viewed[lead]:
        lead += 1
    trail = 0
    while trail < min(len(source), len(viewed)) - lead and source[-1 - trail] == viewed[-1 - trail]:
        trail += 1
    groups = [([k], [k]) for k in range(lead)]
    mid_src = list(range(lead, len(source) - trail))
    mid_dst = list(range(lead, len(viewed) - trail))
    if not (is_static([source[k] for k in mid_src]) and is_static([viewed[k] for k in mid_dst])):
        return None
    i = j = 0
    while i < len(mid_src) or j < len(mid_dst):
        src, dst = [], []
        size_src = size_dst = 1
        # One dim from each side, then the smaller side grows until the sizes meet; a size-1 dim with
        # nothing left on the other side is a group of its own (the reshape adds or drops it).
        while True:
            if i < len(mid_src) and (not src or size_src < size_dst):
                src.append(mid_src[i])
                size_src *= source[mid_src[i]]
                i += 1
            elif j < len(mid_dst) and (not dst or size_dst < size_src):
                dst.append(mid_dst[j])
                size_dst *= viewed[mid_dst[j]]
                j += 1
            else:
                break
            if src and dst and size_src == size_dst:
                break
        if size_src != size_dst:
            return None
        groups.append((src, dst))
    groups += [([len(source) - trail + k], [len(viewed) - trail + k]) for k in range(trail)]
    return groups


def _map_operand(network: Network, name: str, full: list[Dim], mapping, added: list[Layer]) -> str | None:
    desc = network.tensors[name]
    if len(desc.shape) > len(full):
        return None
    padded = [1] * (len(full) - len(desc.shape)) + list(desc.shape)
    mapped = mapping(padded)
    if mapped is None:
        return None
    shape, (kind, arg) = mapped
    if name in network.constants:
        value = network.constants[name].reshape([int(d) for d in padded]) if is_static(padded) else None
        if value is None:
            return None
        value = value.permute(arg) if kind == "permute" else value.reshape(arg)
        return network.add_constant(f"{name}_unviewed", value.contiguous()).name
    current = name
    if padded != list(desc.shape):
        current = _add_view(network, added, "reshape", current, padded, {"shape": padded})
    attrs = {"dims": arg} if kind == "permute" else {"shape": list(shape)}
    return _add_view(network, added, kind, current, list(shape), attrs)


def _add_view(network: Network, added: list[Layer], kind: str, name: str, shape: list[Dim], attrs: dict) -> str:
    desc = network.tensors[name]
    out = TensorDesc(network.new_name(f"{name}_unviewed"), list(shape), desc.dtype)
    network.tensors[out.name] = out
    added.append(Layer(kind, network.new_name(f"{kind}_unview"), [name], [out.name], attrs))
    return out.name
