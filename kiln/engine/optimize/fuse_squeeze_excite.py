"""Squeeze-excite fusion: the gate's mean, two FC stages and their activations become one `squeeze_excite` layer.

After conv epilogue and pointwise fusion an SE module is still three to five layers on tiny
tensors: a spatial mean of x ([N, C, H, W] → [N, C, 1, 1]), a 1x1 conv with its activation
(SiLU, ReLU), a second 1x1 conv with the gate's (sigmoid, hard-sigmoid), each its own launch;
EfficientNet-B0 at batch 1 spends 48 of its ~100 kernels there. The chain becomes one layer
(kernels/squeeze_excite.py) that one generated kernel computes (triton_squeeze_excite.py).
The gate's multiply with x is not taken: input-scale fusion already made it the prologue of
the projection conv.

A chain qualifies when:
- the mean is a `reduce mean` over dims 2 and 3 of a rank-4 float tensor (keepdim or not) or a
  1x1 adaptive average pool, and its result has one reader;
- each of the two stages is a 1x1, stride-1, ungrouped, unpadded `conv` / `conv_epilogue` (no
  residual, no input scale) or a `linear` whose epilogue reads nothing but its result, reading
  the previous value as its input 0; its output may go on through one pointwise layer that reads
  nothing else (a `fused_pointwise` or one generatable element-wise layer, same shape);
- every value inside has exactly one reader and is no network output;
- the hidden width fits one program (triton_squeeze_excite.fits).
The fused layer takes the place of the chain's last member (its inputs, x and the weights, all
exist by then). The builder still times the one-kernel tactics against the reference and the
unfused GEMMs, so fusing never forces a slower kernel.
"""

from __future__ import annotations

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.codegen.program import FLOAT_DTYPES, Program
from kiln.engine.kernels.squeeze_excite import STAGE_ACTIVATIONS
from kiln.engine.kernels.triton_epilogue import fusable_activation
from kiln.engine.kernels.triton_reduce import as_reduction
from kiln.engine.kernels.triton_squeeze_excite import fits
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.fuse_pointwise import _fusable, group_program, joins_pieces, member_ops
from kiln.engine.optimize.precision import with_fp32_members
from kiln.engine.optimize.replace_groups import only_reader, replace_groups

MEAN_KINDS = frozenset({"reduce", "pool"})


@cuda_pass("fuse_squeeze_excite")
def fuse_squeeze_excite_gates(network: Network) -> Network:
    fusions, taken = [], set()
    for layer in network.layers:
        if layer.kind not in MEAN_KINDS or layer.name in taken:
            continue
        match = _match(network, layer)
        if match is not None:
            fused, members = match
            fusions.append((members, fused))
            taken |= {m.name for m in members}
    return replace_groups(network, fusions)


def _match(network: Network, mean: Layer) -> tuple[Layer, list[Layer]] | None:
    readers = network.consumers()
    if not _is_spatial_mean(network, mean):
        return None
    members, stages, params = [mean], [], []
    value = mean.outputs[0]
    for _ in range(2):
        stage = only_reader(network, readers, value)
        if stage is None or not _is_stage(network, stage, value):
            return None
        members.append(stage)
        value = stage.outputs[0]
        after_layer = only_reader(network, readers, value)
        after = _after_program(network, after_layer, value) if after_layer is not None else None
        if after is not None:
            members.append(after_layer)
            value = after_layer.outputs[0]
        stages.append({"kind": stage.kind, "attrs": dict(stage.attrs), "after": after.to_json() if after else None})
        params += [stage.inputs[1], stage.inputs[2]]
    if not fits(network.tensors[params[0]].shape[0]):
        return None
    attrs = {
        "mean": {"kind": mean.kind, "attrs": dict(mean.attrs)},
        "stages": stages,
        "out_dtype": dtype_name(network.tensors[value].dtype),
        "fused_ops": [op for m in members for op in member_ops(m)],
    }
    source = " + ".join(m.source for m in members if m.source)
    last = members[-1]
    attrs = with_fp32_members(attrs, members)
    fused = Layer("squeeze_excite", last.name, [mean.inputs[0], *params], [value], attrs, last.precision, source)
    return fused, members


def _is_spatial_mean(network: Network, layer: Layer) -> bool:
    if len(layer.inputs) != 1 or layer.inputs[0] is None or len(layer.outputs) != 1:
        return False
    x = network.tensors[layer.inputs[0]]
    if x.rank != 4 or x.dtype not in FLOAT_DTYPES:
        return False
    spec = as_reduction(layer.kind, layer.attrs, 4)
    return spec is not None and spec[0] == "mean" and spec[1] == [2, 3]


def _is_stage(network: Network, layer: Layer, value: str) -> bool:
    if layer.kind not in STAGE_ACTIVATIONS or len(layer.inputs) < 3 or layer.inputs[0] != value or value in layer.inputs[1:]:
        return False
    a, tensors = layer.attrs, network.tensors
    w = tensors[layer.inputs[1]]
    x = tensors[value]
    if x.dtype not in FLOAT_DTYPES or w.dtype not in FLOAT_DTYPES or w.rank not in (2, 4) or w.shape[1] != x.shape[1]:
        return False
    if layer.kind == "linear":
        epilogue = a.get("epilogue")
        return x.rank == 2 and len(layer.inputs) == 3 and (epilogue is None or Program.from_json(epilogue).num_inputs == 1)
    if layer.kind == "conv_epilogue" and (a.get("residual") or layer.inputs[3] is not None):
        return False
    return (
        x.rank == 4
        and not a.get("transposed")
        and not a.get("scaled_input")
        and a.get("groups") == 1
        and list(a.get("stride", [])) == [1, 1]
        and list(a.get("padding", [])) == [0, 0]
        and list(a.get("dilation", [1, 1])) == [1, 1]
        and list(w.shape[2:]) == [1, 1]
        and fusable_activation(a.get("activation"))
    )


def _after_program(network: Network, layer: Layer, value: str) -> Program | None:
    """The program of a one-input pointwise layer reading `value` and keeping its shape, else None."""
    out = network.tensors[layer.outputs[0]]
    if list(out.shape) != list(network.tensors[value].shape) or out.dtype not in FLOAT_DTYPES:
        return None
    if joins_pieces(layer):
        return None  # its kernel reads a concat's pieces in place: the squeeze-excite kernel does not
    if layer.kind == "fused_pointwise":
        program = Program.from_json(layer.attrs["program"])
        return program if layer.inputs == [value] and len(program.outputs) == 1 else None
    if not _fusable(layer, network) or [n for n in layer.inputs if n is not None] != [value]:
        return None
    inputs, program = group_program(network, [layer], first_input=value)
    return Program(program.num_inputs, program.ops, (program.num_inputs,))
