"""GEMM epilogue fusion: the element-wise work after a linear layer runs on its output tile.

After pointwise fusion, what follows a linear is one `fused_pointwise` layer (ViT's GELU; a
layer scale and residual add; ConvNeXt's gamma multiply) or a single element-wise layer. When
that layer is the linear's only reader, it becomes the linear's `epilogue` attribute: a
pointwise program whose input 0 is the GEMM result and whose other inputs are appended to the
linear's inputs. The linear then takes the reader's place (its own inputs all exist by then).

Only tactics that declare they take an epilogue run such a layer (kernels/registry.py): the
reference (F.linear, then the program through each op's reference), cuBLAS followed by one
generated in-place pass (aten_addmm), and the Triton GEMM with the program in its epilogue
(triton_gemm.py). The builder times them, so fusing never forces a slower kernel; it removes
a launch and an activation round trip wherever the Triton GEMM wins.
"""

from __future__ import annotations

from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.fuse_pointwise import _fusable, group_program, joins_pieces
from kiln.engine.optimize.precision import with_fp32_members

GEMM_KINDS = frozenset({"linear"})


@cuda_pass("fuse_gemm_epilogues")
def fuse_gemm_epilogue_layers(network: Network) -> Network:
    readers = network.consumers()
    outputs = set(network.outputs)
    replaced: dict[str, Layer] = {}
    gone: set[str] = set()
    for layer in network.layers:
        if layer.kind not in GEMM_KINDS or "epilogue" in layer.attrs or len(layer.outputs) != 1:
            continue
        out = layer.outputs[0]
        users = readers.get(out, [])
        if out in outputs or len(users) != 1 or users[0].name in replaced:
            continue
        fused = _absorb(network, layer, users[0])
        if fused is not None:
            replaced[users[0].name] = fused
            gone.add(layer.name)
    if replaced:
        network.layers = [replaced.get(layer.name, layer) for layer in network.layers if layer.name not in gone]
    return network


def _absorb(network: Network, gemm: Layer, reader: Layer) -> Layer | None:
    out = gemm.outputs[0]
    if len(reader.outputs) != 1:
        return None
    result = network.tensors[reader.outputs[0]]
    if list(result.shape) != list(network.tensors[out].shape) or result.dtype != network.tensors[out].dtype:
        return None
    if joins_pieces(reader):
        return None  # its kernel reads a concat's pieces in place: no GEMM epilogue renders that
    if reader.kind == "fused_pointwise":
        inputs, program = _with_first(Program.from_json(reader.attrs["program"]), reader.inputs, out)
    elif _fusable(reader, network):
        inputs, program = group_program(network, [reader], first_input=out)
    else:
        return None
    if inputs.count(out) != 1:
        return None
    attrs = with_fp32_members({**gemm.attrs, "epilogue": program.to_json()}, [gemm, reader])
    source = " + ".join(s for s in (gemm.source, reader.source) if s)
    # The fused layer writes the reader's output, in the reader's place.
    return Layer(gemm.kind, gemm.name, [*gemm.inputs, *inputs[1:]], list(reader.outputs), attrs, gemm.precision, source)


def _with_first(program: Program, inputs: list[str], first: str) -> tuple[list[str], Program]:
    """The same program with `first` moved to input 0 (argument numbers renumbered to match)."""
    j = inputs.index(first)
    order = [j] + [i for i in range(len(inputs)) if i != j]
    new_number = {old: new for new, old in enumerate(order)}
    ops = tuple(
        {**op, "args": [new_number.get(a, a) if a < program.num_inputs else a for a in op["args"]]} for op in program.ops
    )
    return [inputs[i] for i in order], Program(program.num_inputs, ops, program.outputs)
