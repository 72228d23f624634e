"""A reduction's prologue across reshapes: element-wise layers separated by reshapes, as one program.

Swin's shifted windows add the relative-position bias to the scores, reshape them to split the
batch of windows, add the attention mask there, and reshape back before the softmax. Element-wise
work commutes with a reshape of the whole tensor, so the chain is one program over the reduction
input's shape, provided each of its inputs is presented in that shape: broadcast to the shape of
the layer that reads it, then reshaped the way the chain's values were (`views`: per input, a list
of [broadcast shape, new shape] steps, applied in kernels/fused_reduction.split_inputs). At batch 1
these are views; where the strides do not allow one (the mask broadcast over more than one window
batch), torch.reshape copies that input once, which costs what the separate add did.

Only chains whose values nothing else reads are taken: such a prologue hands nothing out.
"""

from __future__ import annotations

from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.optimize.fuse_pointwise import _fusable, group_program

Chain = tuple[list[str], list[list], Program, list[Layer]]


def reshaped_prologue(network: Network, value: str, producer: dict, readers: dict) -> Chain | None:
    """(inputs, views, program, layers taken) computing `value` from a reshape of element-wise work, or None."""
    reshape = _private_producer(network, value, producer, readers)
    if reshape is None or reshape.kind != "reshape":
        return None
    made_by = _private_producer(network, reshape.inputs[0], producer, readers)
    if made_by is None or not (made_by.kind == "fused_pointwise" or _fusable(made_by, network)) or len(made_by.outputs) != 1:
        return None
    if made_by.kind == "fused_pointwise":
        inputs, program = list(made_by.inputs), Program.from_json(made_by.attrs["program"])
    else:
        inputs, program = group_program(network, [made_by])
        program = Program(program.num_inputs, program.ops, (program.num_inputs,))
    step = [list(network.tensors[made_by.outputs[0]].shape), list(network.tensors[value].shape)]
    views = [[step] for _ in inputs]
    taken = [reshape, made_by]
    # An input that is itself a reshape of private element-wise work joins the same program.
    for name in list(inputs):
        inner = reshaped_prologue(network, name, producer, readers)
        if inner is not None:
            inputs, views, program = compose(inputs, views, program, inputs.index(name), inner)
            taken += inner[3]
    return inputs, views, program, taken


def _private_producer(network: Network, value: str | None, producer: dict, readers: dict) -> Layer | None:
    """The layer making `value` when exactly one layer reads it and it is no network output."""
    if value is None or value in network.outputs or len(readers.get(value, [])) != 1:
        return None
    return producer.get(value)


def compose(inputs: list[str], views: list[list], program: Program, slot: int, inner: Chain) -> tuple[list[str], list[list], Program]:
    """The program with its input `slot` replaced by the inner chain's program (whose inputs are appended)."""
    inner_inputs, inner_views, inner_program, _ = inner
    kept = [m for m in range(program.num_inputs) if m != slot]
    new_inputs = [inputs[m] for m in kept] + list(inner_inputs)
    new_views = [views[m] for m in kept] + [v + views[slot] for v in inner_views]
    count = len(new_inputs)
    inner_number = {k: len(kept) + k for k in range(inner_program.num_inputs)}
    ops = []
    for j, op in enumerate(inner_program.ops):
        inner_number[inner_program.num_inputs + j] = count + j
        ops.append({**op, "args": [inner_number[a] for a in op["args"]]})
    number = {m: i for i, m in enumerate(kept)}
    number[slot] = inner_number[inner_program.outputs[0]]
    base = count + len(inner_program.ops)
    for j, op in enumerate(program.ops):
        number[program.num_inputs + j] = base + j
        ops.append({**op, "args": [number[a] for a in op["args"]]})
    return new_inputs, new_views, Program(count, tuple(ops), tuple(number[o] for o in program.outputs))
