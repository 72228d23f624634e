"""With sparse_weights=True, a linear -> [pointwise] -> linear chain whose two weights are 2:4 becomes one `sparse_mlp` layer.

cuSPARSELt beats dense only when it leaves its result transposed ([N, M], issue 14), which no
single linear can hand its reader. Two linears in a row can: the first's transposed result is
exactly the operand the second wants. So the pair, with what fuse_gemm_epilogues put after each
(the activation between them, a residual add after), becomes one layer (kernels/sparse_mlp.py)
whose tactics are the dense linears as before and the transposed sparse chain; the builder times
them and keeps the faster, so fusing never forces the sparse path.

The pattern, on the layers after fuse_gemm_epilogues and mark_2to4_weights:
  linear(x, W1, b1) [epilogue] -> the only reader: linear(·, W2, b2) [epilogue]
- both marked by mark_2to4_weights with the 2:4 pattern and no kernel-shape problem (a layer
  whose dims the sparse kernels refuse stays a linear, with its reason in the report);
- the hidden value has no other reader and is no network output;
- each epilogue's extra inputs are of its result's shape or per feature (what the generated
  transposed pass reads), and neither linear scales its input (fuse_input_scale);
- the two weights are distinct constants, and both linears compute in the same precision.
Runs after mark_2to4_weights, so only sparse_weights=True builds have marks to match.
"""

from __future__ import annotations

import math

from kiln.engine.ir.network import Layer, Network
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.sparse_weights import SPARSE_ATTR

KIND = "sparse_mlp"
# [mark of the first linear, mark of the second]: mark_2to4_weights's dicts, which the chain tactic adds its choices to.
CHAIN_ATTR = "sparse_2to4_chain"
SPARSE_DTYPES = ("float16", "bfloat16")


@cuda_pass("fuse_sparse_mlp")
def fuse_sparse_mlp_layers(network: Network) -> Network:
    readers = network.consumers()
    outputs = set(network.outputs)
    fused: dict[str, Layer] = {}  # the second linear's name -> the MLP taking its place
    gone: set[str] = set()
    for layer in network.layers:
        if layer.name in gone or layer.name in fused:
            continue
        second = _match(network, layer, readers, outputs)
        if second is None or second.name in gone or second.name in fused:
            continue
        fused[second.name] = _mlp(network, layer, second)
        gone.add(layer.name)
    if fused:
        network.layers = [fused.get(m.name, m) for m in network.layers if m.name not in gone]
        for mlp in fused.values():
            network.tensors.pop(mlp.attrs["hidden"], None)
    return network


def _sparse_ready(layer: Layer) -> bool:
    info = layer.attrs.get(SPARSE_ATTR)
    return (
        layer.kind == "linear"
        and info is not None
        and info.get("pattern")
        and info.get("reason") is None
        and info.get("dtype") in SPARSE_DTYPES
        and not layer.attrs.get("scaled_input")
        and len(layer.outputs) == 1
    )


def _match(network: Network, first: Layer, readers: dict, outputs: set) -> Layer | None:
    if not _sparse_ready(first):
        return None
    hidden = first.outputs[0]
    users = readers.get(hidden, [])
    if hidden in outputs or len(users) != 1:
        return None
    second = users[0]
    if not _sparse_ready(second) or second.inputs[0] != hidden or second.inputs.count(hidden) != 1:
        return None
    if first.inputs[1] == second.inputs[1] or first.precision != second.precision:
        return None
    for layer in (first, second):
        out = network.tensors[layer.outputs[0]].shape
        if not all(_readable(network.tensors[e].shape, out) for e in layer.inputs[3:] if e is not None):
            return None
        if any(e is None for e in layer.inputs[3:]):
            return None
    return second


def _readable(shape: list, out: list) -> bool:
    """An epilogue input the transposed pass reads: of the result's shape, or varying along its features only."""
    if list(shape) == list(out):
        return True
    features = out[-1]
    return bool(shape) and all(isinstance(d, int) for d in shape) and shape[-1] == features and math.prod(shape) == features


def _member_ops(layer: Layer) -> list[str]:
    program = layer.attrs.get("epilogue") or {"ops": []}
    return ["linear:", *(f"{op['kind']}:{op.get('attrs', {}).get('op', '')}" for op in program["ops"])]


def _mlp(network: Network, first: Layer, second: Layer) -> Layer:
    def own(layer: Layer) -> dict:
        return {"name": layer.name, "attrs": {k: v for k, v in layer.attrs.items() if k != SPARSE_ATTR}}

    inputs = [*first.inputs[:3], *second.inputs[1:3], *first.inputs[3:], *second.inputs[3:]]
    attrs = {
        "linears": [own(first), own(second)],
        "hidden_inputs": len(first.inputs) - 3,
        "hidden": first.outputs[0],
        CHAIN_ATTR: [dict(first.attrs[SPARSE_ATTR]), dict(second.attrs[SPARSE_ATTR])],
        "fused_ops": [*_member_ops(first), *_member_ops(second)],
    }
    source = " + ".join(s for s in (first.source, second.source) if s)
    return Layer(KIND, f"{first.name}+{second.name}", inputs, list(second.outputs), attrs, first.precision, source)
