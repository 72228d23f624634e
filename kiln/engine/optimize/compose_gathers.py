"""Composing data movement: a chain of row moves (index_select, reshape, permute) becomes one row gather.

Swin's shifted windows move the activation three times before the qkv projection: torch.roll as
an index_select along H, another along W, then the window partition (reshape, permute, reshape),
whose last reshape copies; the window reverse and the roll back after the projection do the same
again. Every one of those layers keeps the channel dim last and whole, so together they only
reorder rows of the [rows, C] matrix: the chain is `out = x.reshape(-1, C)[index].reshape(...)`
for a row index computed at build time by running the chain on the row numbers. One gather kernel
then replaces the two index_selects and the copy.

A chain is composed when its shapes are static, every layer keeps the last dim (permutes leave it
last, index_select picks along another dim), every tensor inside it has the next layer as its only
reader, and it would launch at least two kernels (index_selects, plus reshapes that cannot view
their input); a chain of views alone is left to mark_views.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.symbolic import is_static
from kiln.engine.ir.tensor import TensorDesc
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.replace_groups import replace_groups

MOVES = frozenset({"reshape", "permute", "index_select"})


@cuda_pass("compose_gathers")
def compose_gather_layers(network: Network) -> Network:
    readers = network.consumers()
    producer = network.producer()
    fusions = []
    for layer in network.layers:
        if not _moves_rows(network, layer) or _continues_a_chain(network, layer, producer, readers):
            continue
        chain = [layer]
        while True:
            out = chain[-1].outputs[0]
            users = readers.get(out, [])
            if out in network.outputs or len(users) != 1 or not _moves_rows(network, users[0]):
                break
            chain.append(users[0])
        if len(chain) < 2 or _kernels(network, chain) < 2:
            continue
        fusions.append((chain, _gather(network, chain)))
    return replace_groups(network, fusions)


def _moves_rows(network: Network, layer: Layer) -> bool:
    """Whether `layer` only moves whole rows of its input's last dim (static shapes, last dim kept)."""
    if layer.kind not in MOVES or len(layer.outputs) != 1:
        return False
    x, out = network.tensors[layer.inputs[0]], network.tensors[layer.outputs[0]]
    if not (is_static(x.shape) and is_static(out.shape)) or x.rank == 0 or out.rank == 0 or x.shape[-1] != out.shape[-1]:
        return False
    if layer.kind == "permute":
        return layer.attrs["dims"][-1] == x.rank - 1
    if layer.kind == "index_select":
        return layer.inputs[1] in network.constants and layer.attrs["dim"] % x.rank != x.rank - 1
    return True


def _continues_a_chain(network: Network, layer: Layer, producer, readers) -> bool:
    made_by = producer.get(layer.inputs[0])
    return (
        made_by is not None
        and _moves_rows(network, made_by)
        and len(readers[layer.inputs[0]]) == 1
        and layer.inputs[0] not in network.outputs
    )


def _kernels(network: Network, chain: list[Layer]) -> int:
    """Kernels the chain launches with views where strides allow (its input taken as dense)."""
    value = torch.empty([int(d) for d in network.tensors[chain[0].inputs[0]].shape], device="meta")
    kernels = 0
    for layer in chain:
        shape = [int(d) for d in network.tensors[layer.outputs[0]].shape]
        if layer.kind == "permute":
            value = value.permute(layer.attrs["dims"])
            continue
        if layer.kind == "reshape":
            try:
                value = value.view(shape)
                continue
            except RuntimeError:
                pass
        kernels += 1
        value = torch.empty(shape, device="meta")
    return kernels


def _gather(network: Network, chain: list[Layer]) -> list[Layer]:
    source = network.tensors[chain[0].inputs[0]]
    result = network.tensors[chain[-1].outputs[0]]
    channels = int(source.shape[-1])
    rows_in = source.shape[:-1]
    rows = torch.arange(_numel(rows_in)).reshape([*rows_in, 1])
    for layer in chain:
        if layer.kind == "reshape":
            rows = rows.reshape([*network.tensors[layer.outputs[0]].shape[:-1], 1])
        elif layer.kind == "permute":
            rows = rows.permute(layer.attrs["dims"])
        else:
            # The roll's index may already be on the GPU (a CUDA build's constants are); the row numbers are
            # worked out on the CPU, and the builder moves the new constant to the device with the others.
            rows = rows[(slice(None),) * layer.attrs["dim"] + (network.constants[layer.inputs[1]].long().cpu(),)]
    index = network.add_constant(f"{chain[-1].name}_rows", rows.reshape(-1).contiguous())
    flat_in = _desc(network, f"{source.name}_rows", [_numel(rows_in), channels], source.dtype)
    flat_out = _desc(network, f"{result.name}_rows", [index.shape[0], channels], result.dtype)
    names = " + ".join(s for s in (m.source for m in chain) if s)
    return [
        Layer("reshape", network.new_name("reshape_rows"), [source.name], [flat_in.name], {"shape": list(flat_in.shape)}, source=names),
        Layer("index_select", chain[-1].name, [flat_in.name, index.name], [flat_out.name], {"dim": 0}, source=names),
        Layer("reshape", network.new_name("reshape_rows"), [flat_out.name], [result.name], {"shape": list(result.shape)}, source=names),
    ]


def _desc(network: Network, base: str, shape: list[int], dtype: torch.dtype) -> TensorDesc:
    desc = TensorDesc(network.new_name(base), shape, dtype)
    network.tensors[desc.name] = desc
    return desc


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
