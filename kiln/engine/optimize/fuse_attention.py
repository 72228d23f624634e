"""Attention written by hand becomes one `attention` layer: softmax(q k^T * scale + mask) v.

Many models spell attention out instead of calling F.scaled_dot_product_attention (timm's Swin,
whose fused path is off by default, LeViT, ...). Converted, that is a matmul of the scores, a
chain of element-wise work, a softmax and a second matmul, each its own kernel with the scores
going through memory in between. Here the chain is recognised and replaced by the `attention`
layer (kernels/attention.py), whose tactics are PyTorch's fused SDPA backends, a fused Triton
kernel for what they refuse (kernels/triton_attention.py: LeViT's unequal head dims with a bias)
and the unfused path (kernels/attention_unfused.py), so the builder keeps the old kernels where
they were faster.

The pattern, on the layers conversion makes (torch.matmul is a bmm between reshapes):
  matmul(q', k') [→ reshape | cast | * or / scalar | + bias]* → softmax(last dim) [→ reshape | cast]*
  → matmul(·, v') [→ reshape]*
- q' and k' may come through reshapes that keep their last two dims and through multiplies by a
  scalar (Swin's `q = q * scale`): all scalars become the layer's scale;
- k' is k^T: when it is a permute, the permute with its last two dims swapped gives k (a view, or
  nothing at all when that permute is the identity); otherwise k' is transposed by a new permute;
- the biases may be added between reshapes of the scores' leading dims (Swin's shifted-window mask
  is added to the scores viewed as [B/nW, nW, H, L, L]). Every reshape only regroups the leading
  (batch) dims, so all of them are views of one finest batch shape, and each bias is expressed in
  that shape. Constant biases (relative-position tables, window masks) are summed at build time
  into one constant; biases computed at run time are added by layers of the network;
- the attention runs on 4-D [N, H, L, D] views of q, k and v (the shape SDPA's fused backends take):
  the finest batch shape is split into N and H where the mask is smallest, broadcast over the rest
  (Swin: the mask [1, nW*H, L, L] over N = B/nW; SDPA takes a float mask broadcastable to
  [N, H, L, S], read with stride 0 where it is broadcast);
- every value between the two matmuls, and the output reshapes, must have no other reader.
Casts inside the chain (a softmax computed in FP32) are accepted: SDPA accumulates in FP32.
Batch dims must be static: with a symbolic batch the regrouping cannot be checked, so the chain
is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.codegen.program import FLOAT_DTYPES
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.fuse_pointwise import member_ops

# Element-wise or view layers allowed between the two matmuls (besides the softmax), by kind.
CHAIN_KINDS = frozenset({"reshape", "cast", "binary"})


@dataclass
class Bias:
    """One additive term of the mask: `factor * value`, value read in its own shape at batch shape `batch`."""

    name: str
    batch: list[int]
    factor: float = 1.0


@dataclass
class Match:
    first: Layer  # q' @ k'
    second: Layer  # probabilities @ v'
    members: list[Layer]  # every layer from the first matmul to the output reshapes, in network order
    output: str  # the value the attention's result takes the place of
    scale: float = 1.0
    biases: list[Bias] = field(default_factory=list)
    batch_shapes: list[list[int]] = field(default_factory=list)


@cuda_pass("fuse_attention")
def fuse_attention_layers(network: Network) -> Network:
    for name in [m.name for m in network.layers if m.kind == "softmax"]:
        softmax = next((m for m in network.layers if m.name == name), None)
        match = _match(network, softmax) if softmax is not None else None
        if match is not None:
            _rewrite(network, match)
    return network


# ---------------------------------------------------------------- matching


def _match(network: Network, softmax: Layer) -> Match | None:
    t = network.tensors
    x = t[softmax.inputs[0]]
    a = softmax.attrs
    if a.get("op") != "softmax" or x.rank < 2 or a.get("dim") not in (-1, x.rank - 1) or x.dtype not in FLOAT_DTYPES:
        return None
    producer, readers = network.producer(), network.consumers()
    length, keys = x.shape[-2], x.shape[-1]

    # Back from the softmax to the scores' matmul: element-wise work and reshapes of the batch dims.
    found = _back_to_matmul(network, softmax.inputs[0], [length, keys], producer, readers)
    if found is None:
        return None
    first, chain = found

    # Forward from the softmax to the matmul with v, then the reshapes of its result.
    after: list[Layer] = []
    value = softmax.outputs[0]
    while True:
        users = readers.get(value, [])
        if value in network.outputs or len(users) != 1:
            return None
        layer = users[0]
        if layer.kind == "matmul":
            break
        if layer.kind not in ("reshape", "cast") or not _keeps_rows(network, layer, [length, keys]):
            return None
        after.append(layer)
        value = layer.outputs[0]
    second = layer
    if not _plain_matmul(network, second) or second.inputs[0] != value or second.inputs[1] == value:
        return None
    out_rows = t[second.outputs[0]].shape[-2:]
    tail: list[Layer] = []
    value = second.outputs[0]
    while value not in network.outputs and len(readers.get(value, [])) == 1:
        reader = readers[value][0]
        if reader.kind != "reshape" or not _keeps_rows(network, reader, list(out_rows)):
            break
        tail.append(reader)
        value = reader.outputs[0]

    # Dtypes: q, k, v and the result in one float dtype, as SDPA takes them.
    dtype = t[first.inputs[0]].dtype
    if any(t[n].dtype != dtype for n in (first.inputs[1], second.inputs[1], value)) or dtype not in FLOAT_DTYPES:
        return None
    members = [first, *chain[::-1], softmax, *after, second, *tail]
    shapes = [list(t[first.outputs[0]].shape[:-2])]
    shapes += [list(t[m.outputs[0]].shape[:-2]) for m in members[1:]]
    if not all(isinstance(d, int) for s in shapes for d in s):
        return None
    match = Match(first, second, members, value, batch_shapes=shapes)
    match.scale = float(first.attrs.get("alpha", 1))
    for layer in chain[::-1]:
        if layer.kind == "binary" and not _take_binary(network, layer, match):
            return None
    return match


def _private_producer(network: Network, value: str, producer: dict, readers: dict) -> Layer | None:
    if value in network.outputs or len(readers.get(value, [])) != 1:
        return None
    return producer.get(value)


def _keeps_rows(network: Network, layer: Layer, rows: list) -> bool:
    """A cast between floats, or a layer whose input and output end in the same two dims `rows`."""
    t = network.tensors
    out = t[layer.outputs[0]]
    if layer.kind == "cast":
        return out.dtype in FLOAT_DTYPES and t[layer.inputs[0]].dtype in FLOAT_DTYPES
    if layer.kind == "binary":
        return out.dtype in FLOAT_DTYPES and list(out.shape[-2:]) == rows
    x = t[layer.inputs[0]]
    return x.rank >= 2 and out.rank >= 2 and list(x.shape[-2:]) == rows and list(out.shape[-2:]) == rows


def _back_to_matmul(network: Network, value: str, rows: list, producer: dict, readers: dict) -> tuple[Layer, list[Layer]] | None:
    """The matmul that made `value` through private chain layers, and those layers from `value` back; None if none.
    A binary layer's scores side is whichever input leads back to a matmul (the other is a bias)."""
    layer = _private_producer(network, value, producer, readers)
    if layer is None:
        return None
    if layer.kind == "matmul":
        return (layer, []) if _plain_matmul(network, layer) else None
    if layer.kind not in CHAIN_KINDS or not _keeps_rows(network, layer, rows):
        return None
    sides = [i for i in layer.inputs if i is not None] if layer.kind == "binary" else layer.inputs[:1]
    if len(set(sides)) != len(sides):
        return None  # scores combined with themselves: no bias
    for side in sides:
        if layer.kind == "binary" and list(network.tensors[side].shape) != list(network.tensors[layer.outputs[0]].shape):
            continue
        found = _back_to_matmul(network, side, rows, producer, readers)
        if found is not None:
            return found[0], [layer, *found[1]]
    return None


def _plain_matmul(network: Network, layer: Layer) -> bool:
    a, b, bias = layer.inputs
    if bias is not None or a is None or b is None:
        return False
    x, y = network.tensors[a], network.tensors[b]
    return x.rank == y.rank >= 2 and list(x.shape[:-2]) == list(y.shape[:-2])


def _scalar(layer: Layer) -> float | None:
    """The factor a `binary` multiply or divide by a literal scalar applies, else None."""
    a = layer.attrs
    s = a.get("scalar")
    if layer.kind != "binary" or layer.inputs[1] is not None or not isinstance(s, (int, float)) or isinstance(s, bool):
        return None
    if a.get("op") == "mul" and math.isfinite(s):
        return float(s)
    if a.get("op") == "div" and math.isfinite(s) and s != 0:
        return 1.0 / s
    return None


def _take_binary(network: Network, layer: Layer, match: Match) -> bool:
    """Fold one binary layer of the score chain into the match's scale and biases (False: not a scale or a bias add)."""
    t = network.tensors
    factor = _scalar(layer)
    if factor is not None:
        match.scale *= factor
        for bias in match.biases:
            bias.factor *= factor
        return True
    op, alpha = layer.attrs.get("op"), layer.attrs.get("alpha", 1)
    scores = next(n for n in layer.inputs if n in _chain_values(match, layer))  # the previous member's output
    other = layer.inputs[1] if layer.inputs[0] == scores else layer.inputs[0]
    if other is None or list(t[layer.outputs[0]].shape) != list(t[scores].shape):
        return False
    if op == "add" and (alpha == 1 or other == layer.inputs[1]):
        sign = float(alpha) if other == layer.inputs[1] else 1.0
    elif op == "sub" and scores == layer.inputs[0]:
        sign = -float(alpha)
    else:
        return False
    if t[other].dtype not in FLOAT_DTYPES or t[other].rank > t[scores].rank:
        return False
    match.biases.append(Bias(other, list(t[scores].shape[:-2]), sign))
    return True


def _chain_values(match: Match, layer: Layer) -> set[str]:
    index = match.members.index(layer)
    return set(match.members[index - 1].outputs)


# ---------------------------------------------------------------- the finest batch shape and the mask


def finest_batch(shapes: list[list[int]]) -> list[int] | None:
    """The batch shape every one of `shapes` (same element count) regroups, or None if two split it incompatibly.

    [1536], [512, 3], [8, 64, 3] -> [8, 64, 3]; [6, 4] and [4, 6] -> None."""
    cuts: set[int] = set()
    for shape in shapes:
        c = 1
        for d in shape:
            c *= d
            cuts.add(c)
    cuts.discard(1)
    cuts = sorted(cuts)
    dims, before = [], 1
    for c in cuts:
        if c % before:
            return None
        dims.append(c // before)
        before = c
    return dims


def _in_finest(batch: list[int], bias_shape: list[int], finest: list[int]) -> list[int] | None:
    """A bias broadcast over scores of batch shape `batch`, as a shape in the finest batch dims (1 where broadcast)."""
    rank = len(batch) + 2
    padded = [1] * (rank - len(bias_shape)) + list(bias_shape)
    cumulative = [1]
    for d in finest:
        cumulative.append(cumulative[-1] * d)
    out, before = [], 1
    for size, b in zip(batch, padded):
        start, end = cumulative.index(before), cumulative.index(before * size)
        if b not in (1, size):
            return None
        out += [1 if b == 1 else d for d in finest[start:end]]
        before *= size
    return out + padded[-2:]


def _group(shape: list[int], finest: list[int]) -> str:
    if all(d == 1 for d in shape):
        return "none"
    return "full" if list(shape) == list(finest) else "mixed"


def choose_split(mask: list[int] | None, finest: list[int], runtime: bool) -> int | None:
    """Where the finest batch dims split into SDPA's N and H: the split giving the smallest mask (a mask
    varying over only part of N or H is materialised over it, which a mask made at run time cannot be)."""
    k = len(finest)
    natural = max(k - 1, 0)
    if mask is None:
        return natural
    best = None
    for j in range(k + 1):
        size = math.prod(mask[k:])
        for part, dims in ((mask[:j], finest[:j]), (mask[j:k], finest[j:])):
            kind = _group(part, dims)
            if kind == "mixed" and runtime:
                size = None
                break
            size *= 1 if kind == "none" else math.prod(dims)
        if size is not None and (best is None or (size, abs(j - natural)) < best[0]):
            best = ((size, abs(j - natural)), j)
    return None if best is None else best[1]


# ---------------------------------------------------------------- rewriting


def _rewrite(network: Network, match: Match) -> None:
    t = network.tensors
    finest = finest_batch(match.batch_shapes)
    if finest is None:
        return
    producer = network.producer()
    q, q_scale, q_walk = _origin(network, match.first.inputs[0], producer, take_scalars=True)
    kt, k_scale, k_walk = _origin(network, match.first.inputs[1], producer, take_scalars=True)
    v, _, v_walk = _origin(network, match.second.inputs[1], producer, take_scalars=False)
    scale = match.scale * q_scale * k_scale
    length, depth = t[q].shape[-2:]
    keys = t[kt].shape[-1]
    value_depth = t[v].shape[-1]

    shapes = []
    for bias in match.biases:
        shape = _in_finest(bias.batch, t[bias.name].shape, finest)
        if shape is None:
            return
        shapes.append(shape)
    runtime = [i for i, b in enumerate(match.biases) if t[b.name].role != "constant"]
    if any(match.biases[i].factor != 1 for i in runtime):
        return
    mask_shape = list(torch.broadcast_shapes(*map(tuple, shapes))) if shapes else None
    split = choose_split(mask_shape, finest, bool(runtime))
    k = len(finest)
    if split is None or any(_group(shapes[i][lo:hi], finest[lo:hi]) == "mixed" for i in runtime for lo, hi in ((0, split), (split, k))):
        return
    n, h = math.prod(finest[:split]), math.prod(finest[split:])
    dtype = t[q].dtype
    new: list[Layer] = []

    def add(kind, inputs, shape, attrs, out_dtype=dtype, name=None) -> str:
        descs = [t[i] if i is not None else None for i in inputs]
        (desc,) = network.add_layer(kind, descs, [(shape, out_dtype)], attrs, source="fuse_attention")
        layer = network.layers.pop()
        if name is not None:  # write into an existing value: its readers keep their input
            del t[desc.name]
            layer.outputs = [name]
            desc = t[name]
        new.append(layer)
        return desc.name

    def viewed(value: str, rows: list) -> str:
        shape = [n, h, *rows]
        return value if list(t[value].shape) == shape else add("reshape", [value], shape, {"shape": shape})

    q4 = viewed(q, [length, depth])
    k, transposed_by = _untransposed(network, kt, producer, add)
    k_walk += transposed_by
    if transposed_by:
        # k^T was a transposing view of k: k itself may be a reshape or a scaling of an earlier value.
        k, more_scale, more_walk = _origin(network, k, producer, take_scalars=True)
        scale *= more_scale
        k_walk += more_walk
    k4 = viewed(k, [keys, depth])
    v4 = viewed(v, [keys, value_depth])
    mask = None
    if mask_shape is not None:
        mask = _mask(network, match, shapes, mask_shape, runtime, finest, split, dtype, add)
    out_shape = [n, h, length, value_depth]
    attrs = {"is_causal": False, "scale": scale, "enable_gqa": False, "fused_ops": [op for m in match.members for op in member_ops(m)]}
    if list(t[match.output].shape) == out_shape:
        add("attention", [q4, k4, v4, mask], out_shape, attrs, name=match.output)
    else:
        result = add("attention", [q4, k4, v4, mask], out_shape, attrs)
        add("reshape", [result], list(t[match.output].shape), {"shape": list(t[match.output].shape)}, name=match.output)
    (attention,) = [m for m in new if m.kind == "attention"]
    attention.source = " + ".join(m.source for m in match.members if m.source)

    gone = {m.name for m in match.members}
    place = max(i for i, m in enumerate(network.layers) if m.name in gone)
    layers = []
    for i, m in enumerate(network.layers):
        if i == place:
            layers += new
        elif m.name not in gone:
            layers.append(m)
    network.layers = layers
    _drop_unread(network, [*q_walk, *k_walk, *v_walk], [b.name for b in match.biases])


def _origin(network: Network, value: str, producer: dict, take_scalars: bool) -> tuple[str, float, list[Layer]]:
    """Walk back from a matmul operand through reshapes keeping its last two dims (and scalar multiplies):
    the earliest such value, the product of the scalars, and the layers walked through."""
    t = network.tensors
    rows = list(t[value].shape[-2:])
    scale, walked = 1.0, []
    while value in producer:
        layer = producer[value]
        factor = _scalar(layer) if take_scalars else None
        if factor is not None:
            scale *= factor
        elif not (layer.kind == "reshape" and list(t[layer.inputs[0]].shape[-2:]) == rows and t[layer.inputs[0]].rank >= 2):
            break
        walked.append(layer)
        value = layer.inputs[0]
    return value, scale, walked


def _untransposed(network: Network, kt: str, producer: dict, add) -> tuple[str, list[Layer]]:
    """k from k^T: the permute that made k^T with its last two dims swapped (nothing if that is the identity),
    and that permute (it may be left unread); a new permute swapping k^T's last two dims where no permute made it."""
    layer = producer.get(kt)
    rank = network.tensors[kt].rank
    if layer is not None and layer.kind == "permute":
        dims = list(layer.attrs["dims"])
        dims[-2], dims[-1] = dims[-1], dims[-2]
        source = layer.inputs[0]
    else:
        dims = [*range(rank - 2), rank - 1, rank - 2]
        source = kt
    walked = [layer] if source != kt else []
    if dims == list(range(rank)):
        return source, walked
    shape = [network.tensors[source].shape[d] for d in dims]
    return add("permute", [source], shape, {"dims": dims}), walked


def _mask(network, match, shapes, mask_shape, runtime, finest, split, dtype, add) -> str:
    """The additive mask as a [N or 1, H or 1, L or 1, S or 1] value: constants summed at build time,
    biases made at run time added by binary layers."""
    t = network.tensors
    k = len(finest)
    full = list(mask_shape)
    for lo, hi in ((0, split), (split, k)):
        if _group(mask_shape[lo:hi], finest[lo:hi]) == "mixed":
            full[lo:hi] = finest[lo:hi]
    groups = [math.prod(full[:split]), math.prod(full[split:k])]
    mask4 = [*groups, *mask_shape[k:]]
    value = None
    constants = [i for i in range(len(match.biases)) if i not in runtime]
    if constants:
        total = torch.zeros(())
        for i in constants:
            bias = match.biases[i]
            term = network.constants[bias.name].to(torch.float32).reshape(shapes[i])
            total = total + bias.factor * term
        info = torch.finfo(dtype)
        total = total.expand(full).clamp(info.min, info.max).to(dtype).contiguous().reshape(mask4)
        value = network.add_constant("attention_mask", total).name
    for i in runtime:
        bias = match.biases[i].name
        if t[bias].dtype != dtype:
            bias = add("cast", [bias], list(t[bias].shape), {"dtype": dtype_name(dtype)})
        shape = [*[math.prod(shapes[i][:split]), math.prod(shapes[i][split:k])], *shapes[i][k:]]
        bias = bias if list(t[bias].shape) == shape else add("reshape", [bias], shape, {"shape": shape})
        if value is not None:
            out = list(torch.broadcast_shapes(tuple(t[value].shape), tuple(shape)))
            bias = add("binary", [value, bias], out, {"op": "add"})
        value = bias
    return value


def _drop_unread(network: Network, candidates: list[Layer], constants: list[str]) -> None:
    """Remove the walked-through layers, and the bias constants, nothing reads any more."""
    candidates = list(candidates)
    changed = True
    while changed:
        changed = False
        read = {n for m in network.layers for n in m.inputs if n is not None} | set(network.outputs)
        for layer in candidates:
            if layer in network.layers and not any(o in read for o in layer.outputs):
                network.layers.remove(layer)
                for o in layer.outputs:
                    network.tensors.pop(o, None)
                changed = True
    read = {n for m in network.layers for n in m.inputs if n is not None} | set(network.outputs)
    for name in constants:
        if name in network.constants and name not in read:
            del network.constants[name]
            del network.tensors[name]
