"""Pointwise fusion: connected groups of element-wise layers become one `fused_pointwise` layer.

Any layer whose arithmetic has a Triton form (codegen.is_generatable: every unary and binary
op of the vocabulary, where, casts between floats and booleans, copies, and the `quantize` of
an 8-bit layer's input) and whose tensors are floats or booleans (a quantize's output: int8 or
e4m3, which nothing in a group reads back) may join a group. Groups grow in layer order: a layer joins the groups of
the layers that make its inputs, when the merged group stays valid:
- every value the group hands out (read by a layer outside it, or a network output) has the
  group's full shape, and every value inside broadcasts to it: a smaller intermediate (the
  sigmoid of a [N, C, 1, 1] squeeze-excite vector) is recomputed per element rather than
  written, which costs arithmetic on data already in registers;
- the fused layer takes the place of the group's last layer, so no outside reader of a group
  value may come before that place;
- at most MAX_OPS ops and MAX_INPUTS inputs, so the generated kernel stays small.
- a concat may head a group (DenseNet's concat -> BatchNorm -> ReLU): when the group alone reads the joined
  tensor and each piece comes from outside the group and is read in it by the concat alone, the kernel
  reads every element from the piece that holds it (kernels/fused_pointwise.py) and the joined tensor is
  never written; its pieces count against MAX_PIECES, not MAX_INPUTS. A concat read elsewhere too is
  written by its own layer anyway, so it stays one.
A group of one layer is left alone: it gains nothing from a generated kernel. Whether the
fused kernel beats the separate ATen kernels is still measured: the builder times the
generated tactic against the reference, which runs the same ops one by one.

Runs after precision assignment (the dtypes, and the boundary casts it inserts, are final
and join groups like any cast) and before layout assignment.
"""

from __future__ import annotations

from itertools import count

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.symbolic import Dim
from kiln.engine.kernels.codegen.program import INDEXED_KINDS, OP_KINDS, Program, is_generatable, reads_pieces, values_fit
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.precision import with_fp32_members
from kiln.engine.optimize.replace_groups import replace_groups

MAX_OPS = 32
MAX_INPUTS = 8
# Pieces of concats read in place, counted apart from MAX_INPUTS: a DenseNet-121 dense layer joins up to
# 25 earlier feature maps, and each costs the kernel one pointer select per element, not a load.
MAX_PIECES = 32


@cuda_pass("fuse_pointwise")
def fuse_pointwise_groups(network: Network) -> Network:
    groups = _find_groups(network)
    if not groups:
        return network
    return replace_groups(network, [(group, _fused_layer(network, group)) for group in groups])


def _joinable(layer: Layer, network: Network) -> bool:
    """A concat the group's kernel can read in place: pieces of one float (or boolean) dtype."""
    if layer.kind not in INDEXED_KINDS or len(layer.outputs) != 1 or None in layer.inputs:
        return False
    ins = {network.tensors[n].dtype for n in layer.inputs}
    return len(ins) == 1 and values_fit(layer, list(ins), [network.tensors[layer.outputs[0]].dtype])


def joins_pieces(layer: Layer) -> bool:
    """A fused_pointwise that reads a concat's pieces in place: only its own flat kernel renders it, so the
    passes that take a fused_pointwise into a GEMM epilogue or a reduction prologue leave this one alone."""
    return layer.kind == "fused_pointwise" and reads_pieces(Program.from_json(layer.attrs["program"]))


def _fusable(layer: Layer, network: Network) -> bool:
    if layer.kind not in OP_KINDS or len(layer.outputs) != 1:
        return False
    ins = [network.tensors[n].dtype for n in layer.inputs if n is not None]
    return values_fit(layer, ins, [network.tensors[n].dtype for n in layer.outputs]) and is_generatable(layer)


def _find_groups(network: Network) -> list[list[Layer]]:
    producer = network.producer()
    readers = network.consumers()
    position = {layer.name: i for i, layer in enumerate(network.layers)}
    outputs = set(network.outputs)
    group_of: dict[str, int] = {}
    members: dict[int, list[Layer]] = {}
    new_id = count()
    for layer in network.layers:
        if not _fusable(layer, network) and not _joinable(layer, network):
            continue
        feeding = []
        for n in layer.inputs:
            made_by = producer.get(n) if n is not None else None
            if made_by is not None and made_by.name in group_of and group_of[made_by.name] not in feeding:
                feeding.append(group_of[made_by.name])
        chosen = None
        # Prefer joining every feeding group at once, then each alone.
        for ids in ([feeding] if len(feeding) > 1 else []) + [[g] for g in feeding]:
            candidate = [m for g in ids for m in members[g]] + [layer]
            if _valid(candidate, network, readers, position, outputs):
                chosen = ids
                break
        gid = chosen[0] if chosen else next(new_id)
        merged = [m for g in (chosen or []) for m in members.pop(g)] + [layer]
        merged.sort(key=lambda m: position[m.name])
        members[gid] = merged
        for m in merged:
            group_of[m.name] = gid
    return [g for g in members.values() if len(g) > 1]


def _valid(group: list[Layer], network: Network, readers, position, outputs) -> bool:
    names = {m.name for m in group}
    last = max(position[m.name] for m in group)
    made = {o for m in group for o in m.outputs}
    joins = [m for m in group if m.kind in INDEXED_KINDS]
    pieces = {n for m in joins for n in m.inputs}
    external_inputs = {n for m in group for n in m.inputs if n is not None and n not in made and n not in pieces}
    if len(group) > MAX_OPS or len(external_inputs) > MAX_INPUTS or len(pieces) > MAX_PIECES:
        return False
    if not all(_reads_in_place(m, group, made, readers, outputs) for m in joins):
        return False
    handed_out = []
    for value in made:
        outside = [r for r in readers.get(value, []) if r.name not in names]
        if any(position[r.name] < last for r in outside):
            return False
        if outside or value in outputs:
            handed_out.append(value)
    if not handed_out:
        return False
    shape = list(network.tensors[handed_out[0]].shape)
    if any(list(network.tensors[v].shape) != shape for v in handed_out):
        return False
    if any(list(network.tensors[m.outputs[0]].shape) != shape for m in joins):
        return False
    return all(_broadcasts_to(network.tensors[n].shape, shape) for n in (*made, *external_inputs))


def _reads_in_place(join: Layer, group: list[Layer], made: set[str], readers, outputs) -> bool:
    """A concat in a group reads its pieces where they lie: each piece comes from outside the group and is read
    by nothing else in it (the kernel reads it shifted, at the joined index), and the joined tensor is read by
    the group alone (if it is needed elsewhere, it is written by the concat anyway: leave the concat alone)."""
    if len(set(join.inputs)) != len(join.inputs) or any(n in made for n in join.inputs):
        return False
    if any(n in join.inputs for m in group if m is not join for n in m.inputs):
        return False
    out = join.outputs[0]
    return out not in outputs and all(r in group for r in readers.get(out, []))


def _broadcasts_to(small: list[Dim], full: list[Dim]) -> bool:
    if len(small) > len(full):
        return False
    return all(s == f or s == 1 for s, f in zip(reversed(list(small)), reversed(list(full))))


def group_program(network: Network, group: list[Layer], first_input: str | None = None) -> tuple[list[str], Program]:
    """The group's external inputs (first_input first, if given) and its arithmetic as a program over them."""
    readers = network.consumers()
    names = {m.name for m in group}
    made = [o for m in group for o in m.outputs]
    inputs: list[str] = [first_input] if first_input is not None else []
    for m in group:
        for n in m.inputs:
            if n is not None and n not in made and n not in inputs:
                inputs.append(n)
    number = {n: i for i, n in enumerate(inputs)}
    ops = []
    for m in group:
        args = [number[n] for n in m.inputs if n is not None]
        ops.append({"kind": m.kind, "op": m.attrs.get("op", m.kind), "args": args, "attrs": dict(m.attrs)})
        number[m.outputs[0]] = len(inputs) + len(ops) - 1
    outs = [o for o in made if o in network.outputs or any(r.name not in names for r in readers.get(o, []))]
    return inputs, Program(len(inputs), tuple(ops), tuple(number[o] for o in outs))


def _fused_layer(network: Network, group: list[Layer]) -> Layer:
    inputs, program = group_program(network, group)
    made = [o for m in group for o in m.outputs]
    outs = [made[i - program.num_inputs] for i in program.outputs]
    attrs = {
        "program": program.to_json(),
        "out_dtypes": [dtype_name(network.tensors[o].dtype) for o in outs],
        "fused_ops": [op for m in group for op in member_ops(m)],
    }
    attrs = with_fp32_members(attrs, group)
    last = group[-1]
    source = " + ".join(s for s in (m.source for m in group) if s)
    return Layer("fused_pointwise", last.name, inputs, outs, attrs, last.precision, source)


def member_ops(layer: Layer) -> list[str]:
    """How a fused layer's `fused_ops` names a member: kind:op (a norm's type, a cast's dtype), a conv's fused
    activation after it, and a fused_pointwise member by the ops it already lists. Every fusion pass uses it."""
    if layer.kind == "fused_pointwise":
        return list(layer.attrs.get("fused_ops", []))
    a = layer.attrs
    ops = [f"{layer.kind}:{a.get('op', a.get('type', a.get('dtype', '')))}"]
    if a.get("activation"):
        ops.append(f"unary:{a['activation']}")
    return ops
