"""Reduction fusion: a reduction and the element-wise programs next to it become one `fused_reduction` layer.

A reduction qualifies when some generated kernel computes it (kernels/fused_reduction.py's
`generated_reduction` declarations: group norm, softmax over the last dim, sum/mean/amax...).
Then, after pointwise fusion has grouped the element-wise layers:
- prologue: if the reduction's input is made by a `fused_pointwise` layer or one generatable
  element-wise layer, that program is computed in the reduction kernel. Its values that other
  layers still read (PoolFormer's residual stream, which feeds its GroupNorm and the next
  residual add) become extra outputs the kernel writes; none of those readers may come before
  the fused layer's place;
- epilogue: if the reduction's result has one reader and that reader is such a layer of the
  same shape, its program runs on the result before it is stored (as GEMM epilogues do). With
  several readers, one such reader that comes before the others still joins, and the result is
  written too, as a second output: the LayerNorm of an INT8 BERT layer feeds the next 8-bit linear
  through a `quantize` layer and a residual add in FP16, so the norm writes the FP16 row and its
  8-bit copy in one kernel, and the quantize layer (a read and a launch) is gone.
- broadcast epilogue: a reduction over the last dim with keepdim whose [..., 1] result is read back
  against whole rows (F.normalize: norm -> clamp_min -> expand -> x / that; a norm's own
  `(x - mean) * rstd` has the same shape) takes the chain, when a whole-row kernel computes it
  (`has_generated_broadcast`): an optional pointwise layer on the result, an optional expand to the
  row's shape (plain broadcasting inside the program), then a pointwise layer of the row's shape.
  Every value between them is read by the next alone; the fused layer's output is the row-shaped one.
The fused layer takes the place of its last member. The builder still times the generated
tactic against the reference, which runs the members one by one, so fusing never forces a
slower kernel.
"""

from __future__ import annotations

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.fused_reduction import has_generated, has_generated_broadcast
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.fuse_gemm_epilogue import _with_first
from kiln.engine.optimize.fuse_pointwise import _fusable, group_program, joins_pieces, member_ops
from kiln.engine.optimize.precision import with_fp32_members
from kiln.engine.optimize.reshaped_prologue import reshaped_prologue

# More inputs than this makes a kernel with too many pointer arguments to stay cheap to launch.
MAX_INPUTS = 12


@cuda_pass("fuse_reductions")
def fuse_reduction_layers(network: Network) -> Network:
    for name in [layer.name for layer in network.layers]:
        layer = next((m for m in network.layers if m.name == name), None)
        if layer is None or len(layer.outputs) != 1 or layer.inputs[0] is None:
            continue
        if not has_generated(layer.kind, layer.attrs, network.tensors[layer.inputs[0]]):
            continue
        fused, gone = _fuse(network, layer)
        if fused is not None:
            place = max(i for i, m in enumerate(network.layers) if m.name in gone)
            kept = [m for i, m in enumerate(network.layers) if m.name not in gone or i == place]
            network.layers = [fused if m.name == network.layers[place].name else m for m in kept]
    return network


def _fuse(network: Network, reduction: Layer) -> tuple[Layer | None, set[str]]:
    producer = network.producer()
    readers = network.consumers()
    position = {m.name: i for i, m in enumerate(network.layers)}
    broadcast = _broadcast_chain(network, reduction, readers)
    epilogue_layer = broadcast[-1] if broadcast else _epilogue_layer(network, reduction, readers, position)
    place = position[(epilogue_layer or reduction).name]
    prologue_layer = _prologue_layer(network, reduction, producer, readers, position, place)
    epilogue_reads = {n for m in (broadcast or ([epilogue_layer] if epilogue_layer else [])) for n in m.inputs}
    if prologue_layer is not None and epilogue_layer is not None and epilogue_reads & set(prologue_layer.outputs):
        # The epilogue reads a value the prologue makes (PoolFormer's GELU output added to the stream
        # the norm read): the kernel would read what it is writing. Keep the prologue, which saves more.
        epilogue_layer = broadcast = None
        prologue_layer = _prologue_layer(network, reduction, producer, readers, position, position[reduction.name])
    # Without a direct prologue, one across reshapes (Swin's mask add between two reshapes).
    chain = reshaped_prologue(network, reduction.inputs[0], producer, readers) if prologue_layer is None else None
    if prologue_layer is None and chain is None and epilogue_layer is None:
        return None, set()

    x = reduction.inputs[0]
    extras = list(reduction.inputs[1:])
    handed: list[str] = []
    if prologue_layer is not None:
        pro_inputs, pro_program, made = _prologue_program(network, prologue_layer)
        inside = {reduction.name} | ({epilogue_layer.name} if epilogue_layer else set())
        handed = [o for o in made if o in network.outputs or any(r.name not in inside for r in readers.get(o, []))]
        number = dict(zip(made, pro_program.outputs))
        pro_program = Program(pro_program.num_inputs, pro_program.ops, (number[x], *(number[o] for o in handed)))
    elif chain is not None:
        pro_inputs, views, pro_program, _ = chain
    else:
        pro_inputs, pro_program = [x], None
    results = [reduction.outputs[0]]
    if broadcast:
        epi_inputs, epi_program = _chain_program(broadcast, results[0])
        results = [epilogue_layer.outputs[0]]
    elif epilogue_layer is not None:
        epi_inputs, epi_program = _epilogue_program(network, epilogue_layer, results[0])
        if len(readers[results[0]]) > 1 or results[0] in network.outputs:
            # The result is read elsewhere too: the epilogue also hands out its input 0, the result itself.
            epi_program = Program(epi_program.num_inputs, epi_program.ops, (*epi_program.outputs, 0))
            results = [epilogue_layer.outputs[0], results[0]]
        else:
            results = [epilogue_layer.outputs[0]]
    else:
        epi_inputs, epi_program = [results[0]], None
    inputs = [*pro_inputs, *extras, *epi_inputs[1:]]
    if len([n for n in inputs if n is not None]) > MAX_INPUTS:
        return None, set()
    outputs = [*results, *handed]
    epilogue_members = broadcast or [epilogue_layer]
    members = [m for m in (*(chain[3][::-1] if chain else ()), prologue_layer, reduction, *epilogue_members) if m is not None]
    attrs = {
        "reduction": {
            "kind": reduction.kind,
            "attrs": dict(reduction.attrs),
            "num_extras": len(extras),
            # The dtypes of the values between the parts, for the tactic that runs the parts one after another.
            "dtypes": [dtype_name(network.tensors[n].dtype) for n in (x, reduction.outputs[0])],
        },
        "prologue": pro_program.to_json() if pro_program else None,
        "prologue_views": views if chain is not None else None,
        "epilogue": epi_program.to_json() if epi_program else None,
        "broadcast": bool(broadcast),
        "out_dtypes": [dtype_name(network.tensors[o].dtype) for o in outputs],
        "fused_ops": [op for m in members for op in member_ops(m)],
    }
    source = " + ".join(m.source for m in members if m.source)
    fused = Layer("fused_reduction", reduction.name, inputs, outputs, with_fp32_members(attrs, members), reduction.precision, source)
    return fused, {m.name for m in members}


def _pointwise(layer: Layer, network: Network) -> bool:
    return (layer.kind == "fused_pointwise" and not joins_pieces(layer)) or _fusable(layer, network)


def _prologue_layer(network, reduction, producer, readers, position, place) -> Layer | None:
    made_by = producer.get(reduction.inputs[0])
    if made_by is None or not _pointwise(made_by, network):
        return None
    # Every value the prologue hands out is written by the fused layer, at its place.
    for out in made_by.outputs:
        if any(position[r.name] < place and r.name != reduction.name for r in readers.get(out, [])):
            return None
    # A reduction's extra input (a norm's weight) made by the prologue itself would be needed before it exists.
    if any(n in made_by.outputs for n in reduction.inputs[1:] if n is not None):
        return None
    return made_by


def _epilogue_layer(network, reduction, readers, position) -> Layer | None:
    out = reduction.outputs[0]
    users = sorted(readers.get(out, []), key=lambda r: position[r.name])
    if not users or not _pointwise(users[0], network) or len(users[0].outputs) != 1:
        return None
    if (len(users) > 1 or out in network.outputs) and not _worth_a_second_output(network, users[0]):
        return None
    # The fused layer sits at the epilogue's place: the result's other readers come after it (sorted above).
    reader = users[0]
    result = network.tensors[reader.outputs[0]]
    if list(result.shape) != list(network.tensors[out].shape) or reader.inputs.count(out) != 1:
        return None
    return reader


def _worth_a_second_output(network: Network, reader: Layer) -> bool:
    """Whether a reader of a result that others read too should join as its epilogue. Only one that quantizes: its
    8-bit output is an extra byte per element written, against a read of the result (2 bytes in FP16) and a launch.
    A float reader would write as much as it saves, and it may still fuse into the result's other side."""
    program = Program.from_json(reader.attrs["program"]) if reader.kind == "fused_pointwise" else None
    ops = [op["kind"] for op in program.ops] if program is not None else [reader.kind]
    return "quantize" in ops and all(network.tensors[o].dtype.itemsize == 1 for o in reader.outputs)


def _prologue_program(network: Network, layer: Layer) -> tuple[list[str], Program, list[str]]:
    """The producing layer's inputs, its program with every output it makes, and those outputs' names."""
    if layer.kind == "fused_pointwise":
        return list(layer.inputs), Program.from_json(layer.attrs["program"]), list(layer.outputs)
    inputs, program = group_program(network, [layer])
    # group_program lists only outputs read outside the group; a lone layer's one output is always one.
    return inputs, Program(program.num_inputs, program.ops, (program.num_inputs,)), list(layer.outputs)


def _epilogue_program(network: Network, layer: Layer, first: str) -> tuple[list[str], Program]:
    if layer.kind == "fused_pointwise":
        return _with_first(Program.from_json(layer.attrs["program"]), list(layer.inputs), first)
    inputs, program = group_program(network, [layer], first_input=first)
    return inputs, Program(program.num_inputs, program.ops, (program.num_inputs,))


def _broadcast_chain(network: Network, reduction: Layer, readers) -> list[Layer] | None:
    """The layers that read a last-dim reduction's [..., 1] result back against whole rows: an optional pointwise
    layer of the result's shape, an optional expand to the row's shape, and a pointwise layer of the row's shape."""
    x = network.tensors[reduction.inputs[0]]
    if not has_generated_broadcast(reduction.kind, reduction.attrs, x):
        return None
    row_shape = list(x.shape)

    def only_reader(value: str) -> Layer | None:
        users = readers.get(value, [])
        return users[0] if len(users) == 1 and value not in network.outputs else None

    def pointwise_of(layer: Layer | None, shape: list) -> bool:
        return (
            layer is not None
            and _pointwise(layer, network)
            and len(layer.outputs) == 1
            and list(network.tensors[layer.outputs[0]].shape) == shape
        )

    chain: list[Layer] = []
    value = reduction.outputs[0]
    small_shape = list(network.tensors[value].shape)
    reader = only_reader(value)
    if pointwise_of(reader, small_shape) and small_shape != row_shape:
        chain.append(reader)
        value = reader.outputs[0]
        reader = only_reader(value)
    if reader is not None and reader.kind == "expand" and list(network.tensors[reader.outputs[0]].shape) == row_shape:
        chain.append(reader)
        value = reader.outputs[0]
        reader = only_reader(value)
    if not pointwise_of(reader, row_shape) or reader.inputs.count(value) != 1:
        return None
    return [*chain, reader]


def _chain_program(layers: list[Layer], first: str) -> tuple[list[str], Program]:
    """One program over a chain of pointwise layers (fused_pointwise ones inlined), `first` its input 0. An expand is
    no op: its input broadcasts against the rows where it is read, in the references as in the kernels."""
    made = {o for m in layers for o in m.outputs}
    inputs = [first]
    for m in layers:
        inputs += [n for n in m.inputs if n is not None and n not in made and n not in inputs]
    number = {n: i for i, n in enumerate(inputs)}
    ops: list[dict] = []
    for m in layers:
        if m.kind == "expand":
            number[m.outputs[0]] = number[m.inputs[0]]
            continue
        if m.kind == "fused_pointwise":
            program = Program.from_json(m.attrs["program"])
            local = [number[n] for n in m.inputs]
        else:
            local = [number[n] for n in m.inputs if n is not None]
            op = {"kind": m.kind, "op": m.attrs.get("op", m.kind), "args": list(range(len(local))), "attrs": dict(m.attrs)}
            program = Program(len(local), (op,), (len(local),))
        for op in program.ops:
            ops.append({**op, "args": [local[a] if a is not None else None for a in op["args"]]})
            local.append(len(inputs) + len(ops) - 1)
        for out, v in zip(m.outputs, program.outputs):
            number[out] = local[v]
    return inputs, Program(len(inputs), tuple(ops), (number[layers[-1].outputs[0]],))
