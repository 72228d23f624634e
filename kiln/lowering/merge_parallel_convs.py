"""Parallel conv branches of one input that are summed become one conv (structural re-parameterisation).

RepVGG, MobileOne, RepGhost and FastViT train with several branches on the same input, a kxk conv, a
1x1 conv, an identity BatchNorm, and add them; each model ships a `reparameterize()` that merges them
for inference, which a user compiling the model as trained has not called. Unmerged, each block reads
its input once per branch and launches a conv per branch plus the adds (timm's repvgg_a2 at batch 128
on an H200 ran at 0.81x torch.compile). A conv is linear in its weight, so the branches are one conv:
    sum_i conv(x, W_i, b_i) + scale * x + shift = conv(x, sum_i pad(W_i) + diag(scale), sum_i b_i + shift)
where pad(W_i) places a smaller kernel inside the largest one at the taps that read the same input
pixels (a 1x1 at the centre of a 3x3), and the identity is a centre tap on each channel's own input
channel (for a grouped conv, that channel's place within its group). The adds' ReLU then fuses into
the merged conv's epilogue like any conv's.

An add tree (adds whose intermediate sums feed only the next add) is searched for leaves of one input
x: non-transposed convs with frozen weights and the same stride, dilation, groups and output channels,
read by the tree alone; an inference BatchNorm of x no conv fold took; x itself, beside two such
branches at least (conv(x) + x alone is a residual block, whose add the conv's epilogue already takes).
They merge when every kernel lands on whole taps of the merged kernel (the padding differences are
multiples of the dilation), the merged conv's output size is one of theirs for any input size, and an
identity branch has stride 1 and as many output channels as x has. Leaves of other inputs stay as terms of the sum.
The tree may also subtract and scale per channel (FastViT's RepMixer is x + gamma * (mixer(x) - norm(x))):
each leaf then merges times its factor, and only unscaled leaves may stay outside the merged conv.
Runs after fold_batch_norm (each branch's norm is in its conv) and fold_constants (a layer scale
`gamma.view(1, -1, 1, 1)` is one constant), while the constants keep the model's precision; the sum is
done in float64 and rounded once.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from kiln.lowering.constants import add_constant, constant_of, has_frozen_weights
from kiln.lowering.fold_batch_norm import batch_norm_scale_shift

aten = torch.ops.aten
_ADD = aten.add.Tensor
_CONV = aten.convolution.default
_BATCH_NORM = aten._native_batch_norm_legit_no_training.default


_SUB = aten.sub.Tensor
_MUL = aten.mul.Tensor
_ONE = torch.tensor(1.0, dtype=torch.float64)


@dataclass
class _Branch:
    """One leaf of a sum, times `coef` (float64, a number or one per channel): a conv of `source`, or
    `scale * source + shift` (scale, shift None: source itself)."""

    leaf: Node
    coef: torch.Tensor
    source: Node
    conv: Node | None = None
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None


def merge_parallel_convs(gm: GraphModule) -> GraphModule:
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    erased: set[Node] = set()
    for root in reversed(list(graph.nodes)):
        if root in erased or _linear_parts(gm, root) is None:
            continue
        adds, leaves = _sum_tree(gm, root)
        branches = [_branch(gm, leaf, coef, adds) for leaf, coef in leaves]
        groups = _merge_groups(branches)
        merged = {id(b) for group in groups for b in group}
        if not groups:
            continue
        terms = [_merged_conv(gm, group, root) for group in groups]
        terms += [_scaled(gm, b, root) for b in branches if id(b) not in merged]
        _write_sum(graph, root, terms)
        dead = set(adds) | {b.leaf for group in groups for b in group}
        dead |= {b.leaf.args[0] for group in groups for b in group if b.conv is None and b.scale is not None}
        for node in sorted(dead, key=order.__getitem__, reverse=True):
            if not node.users:
                graph.erase_node(node)
                erased.add(node)
    return gm


def _linear_parts(gm: GraphModule, node: Node) -> list[tuple[Node, torch.Tensor]] | None:
    """The terms a linear node sums, each with its factor: `a + b`, `a - b` (no broadcast, no alpha), `a + 0`,
    and `a * c` for a constant c per channel (a layer scale); None for any other node.

    MobileOne starts its sum at a Python 0 (`out = 0; out += branch(x)`) and adds `identity_out = 0` where a
    block has no identity: the zero is no term, and the branch it hides is one of the sum's. FastViT's RepMixer
    is `x + gamma * (mixer(x) - norm(x))`, a sum with per-channel factors."""
    if node.op != "call_function" or node.target not in (_ADD, _SUB, _MUL) or len(node.args) != 2:
        return None
    out = node.meta.get("val")
    if not isinstance(out, torch.Tensor) or node.kwargs.get("alpha", 1) != 1 or not out.is_floating_point():
        return None
    terms = [arg for arg in node.args if isinstance(arg, Node) and _same_value_kind(arg, out)]
    if node.target is _MUL:
        for term, factor in (node.args, node.args[::-1]):
            if term in terms and (channels := _channel_factor(gm, factor, out)) is not None:
                return [(term, channels)]
        return None
    if len(terms) == 2:
        return [(terms[0], _ONE), (terms[1], -_ONE if node.target is _SUB else _ONE)]
    zero = next((arg for arg in node.args if not isinstance(arg, Node)), None)
    if len(terms) == 1 and node.target is _ADD and type(zero) in (int, float) and zero == 0:
        return [(terms[0], _ONE)]
    return None


def _same_value_kind(node: Node, out: torch.Tensor) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == out.dtype and _same_shape(val, out)


def _channel_factor(gm: GraphModule, factor, out: torch.Tensor) -> torch.Tensor | None:
    """A multiplier that is one number, or varies along dim 1 of `out` alone, as float64 (one per channel)."""
    if type(factor) in (int, float):
        return torch.tensor(float(factor), dtype=torch.float64)
    value = constant_of(gm, factor)
    if value is None or value.dtype != out.dtype or value.dim() > out.dim() or out.dim() < 2:
        return None
    if value.numel() == 1:
        return value.double().reshape(())
    shape = [1] * (out.dim() - value.dim()) + list(value.shape)
    if shape[1] != value.numel() or not statically_known_true(out.shape[1] == value.numel()):
        return None
    return value.double().reshape(-1)


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dim() == b.dim() and all(statically_known_true(x == y) for x, y in zip(a.shape, b.shape))


def _sum_tree(gm: GraphModule, root: Node) -> tuple[list[Node], list[tuple[Node, torch.Tensor]]]:
    """The linear nodes of the tree under `root` (one belongs when its only reader is one of them) and its leaves,
    each with the product of the factors on its way to the root."""
    adds, leaves, stack = [root], [], list(_linear_parts(gm, root))
    while stack:
        node, coef = stack.pop()
        parts = _linear_parts(gm, node) if len(node.users) == 1 and next(iter(node.users)) in adds else None
        if parts is None:
            leaves.append((node, coef))
            continue
        adds.append(node)
        stack += [(term, coef * factor) for term, factor in parts]
    return adds, leaves


def _read_only_by(node: Node, adds: list[Node]) -> bool:
    return all(user in adds for user in node.users)


def _branch(gm: GraphModule, leaf: Node, coef: torch.Tensor, adds: list[Node]) -> _Branch:
    if _is_conv(gm, leaf) and _read_only_by(leaf, adds):
        return _Branch(leaf, coef, leaf.args[0], conv=leaf)
    norm = leaf.args[0] if leaf.target is operator.getitem and leaf.args[1] == 0 else None
    if isinstance(norm, Node) and norm.target is _BATCH_NORM and len(norm.users) == 1 and _read_only_by(leaf, adds):
        gamma, beta, mean, var = (constant_of(gm, a) if a is not None else None for a in norm.args[1:5])
        frozen = all(a is None or constant_of(gm, a) is not None for a in norm.args[1:3])
        if frozen and mean is not None and var is not None:
            scale, shift = batch_norm_scale_shift(gamma, beta, mean, var, norm.args[6])
            return _Branch(leaf, coef, norm.args[0], scale=scale, shift=shift)
    return _Branch(leaf, coef, leaf)


def _is_conv(gm: GraphModule, node: Node) -> bool:
    if node.op != "call_function" or node.target is not _CONV or node.args[6] or not has_frozen_weights(gm, node):
        return False
    return constant_of(gm, node.args[1]).dim() >= 3


def _conv_key(conv: Node, weight: torch.Tensor) -> tuple:
    """What convs must share to be one conv: input, stride, dilation, groups, output channels, weight dtype."""
    stride, dilation, groups = tuple(conv.args[3]), tuple(conv.args[5]), conv.args[8]
    return conv.args[0], stride, dilation, groups, weight.shape[0], weight.shape[1], weight.dim(), weight.dtype


def _merge_groups(branches: list[_Branch]) -> list[list[_Branch]]:
    """Branches that become one conv each: convs of one kind on one input, with that input's identity branches."""
    by_key: dict[tuple, list[_Branch]] = {}
    for b in branches:
        if b.conv is not None:
            by_key.setdefault(_conv_key(b.conv, _weight(b.conv)), []).append(b)
    identities = [b for b in branches if b.conv is None]
    groups = []
    for key, convs in by_key.items():
        source, stride, _, groups_, out_channels, in_per_group = key[:6]
        channels = source.meta.get("val").shape[1] if isinstance(source.meta.get("val"), torch.Tensor) else None
        takes_identity = all(s == 1 for s in stride) and statically_known_true(channels == out_channels)
        takes_identity = takes_identity and in_per_group * groups_ == out_channels
        joined = [b for b in identities if takes_identity and b.source is source]
        identities = [b for b in identities if b not in joined]
        group = convs + joined
        # One conv plus its own input is a residual block: the add is already that conv's epilogue, and
        # folding the identity into the weights would make 8-bit weight scales coarse for a small conv.
        branches_of_their_own = len(convs) + sum(b.scale is not None for b in joined)
        if branches_of_their_own >= 2 and _merged_geometry(group) is not None:
            groups.append(group)
    return groups


def _weight(conv: Node) -> torch.Tensor:
    return constant_of(conv.graph.owning_module, conv.args[1])


def _merged_geometry(group: list[_Branch]) -> tuple[tuple, tuple, list[tuple]] | None:
    """(kernel size, padding, each branch's tap offset in it), or None where the branches do not line up.

    A kernel of size k and padding p reads input pixel o * stride - p + i * dilation at tap i; in the
    merged kernel (padding P) that pixel is tap i + (P - p) / dilation, so P - p must be a multiple of
    the dilation. An identity branch is a 1x1 kernel with no padding."""
    first = group[0].conv
    dilation = tuple(first.args[5])
    rank = len(dilation)
    shapes = [tuple(_weight(b.conv).shape[2:]) if b.conv is not None else (1,) * rank for b in group]
    paddings = [tuple(b.conv.args[4]) if b.conv is not None else (0,) * rank for b in group]
    if any(len(p) != rank for p in paddings):
        return None
    padding = tuple(max(p[d] for p in paddings) for d in range(rank))
    if any((padding[d] - p[d]) % dilation[d] for p in paddings for d in range(rank)):
        return None
    offsets = [tuple((padding[d] - p[d]) // dilation[d] for d in range(rank)) for p in paddings]
    kernel = tuple(max(o[d] + k[d] for o, k in zip(offsets, shapes)) for d in range(rank))
    # The merged conv keeps the output size only if its (padding, kernel) span matches some branch's.
    for d in range(rank):
        span = 2 * padding[d] - dilation[d] * (kernel[d] - 1)
        if not any(2 * p[d] - dilation[d] * (k[d] - 1) == span for p, k in zip(paddings, shapes)):
            return None
    return kernel, padding, offsets


def _merged_conv(gm: GraphModule, group: list[_Branch], root: Node) -> Node:
    kernel, padding, offsets = _merged_geometry(group)
    first = next(b.conv for b in group if b.conv is not None)
    template = _weight(first)
    out_channels, in_per_group = template.shape[:2]
    # Merged in float64 on the CPU, whatever device the model's constants are on (a CUDA model's are on the GPU),
    # then moved back once.
    weight = torch.zeros(out_channels, in_per_group, *kernel, dtype=torch.float64)
    bias = None
    channel = torch.arange(out_channels)
    for b, offset in zip(group, offsets):
        coef = b.coef.reshape(-1).cpu()
        if b.conv is not None:
            w = _weight(b.conv).double().cpu() * coef.reshape(-1, *[1] * (len(kernel) + 1))
            weight[(slice(None), slice(None), *(slice(o, o + k) for o, k in zip(offset, w.shape[2:])))] += w
            term = constant_of(gm, b.conv.args[2]) if b.conv.args[2] is not None else None
        else:
            scale = b.scale.double().cpu() if b.scale is not None else torch.ones(out_channels, dtype=torch.float64)
            weight[(channel, channel % in_per_group, *offset)] += scale * coef
            term = b.shift
        if term is not None:
            term = term.double().cpu() * coef
            bias = term if bias is None else bias + term
    name = f"{first.name}_merged"
    w_node = add_constant(gm, weight.to(template.device, template.dtype), root, f"{name}_weight")
    b_node = add_constant(gm, bias.to(template.device, template.dtype), root, f"{name}_bias") if bias is not None else None
    stride, dilation, groups = list(first.args[3]), list(first.args[5]), first.args[8]
    rank = len(kernel)
    with gm.graph.inserting_before(root):
        conv = gm.graph.call_function(_CONV, (first.args[0], w_node, b_node, stride, list(padding), dilation, False, [0] * rank, groups))
    conv.meta.update(first.meta)
    return conv


def _scaled(gm: GraphModule, branch: _Branch, root: Node) -> Node:
    """A leaf that stays in the sum, times the factor it had in the tree."""
    if bool((branch.coef == 1).all()):
        return branch.leaf
    out = root.meta["val"]
    if branch.coef.numel() == 1:
        factor = branch.coef.item()
    else:
        channels = branch.coef.to(out.device, out.dtype).reshape(-1, *[1] * (out.dim() - 2))
        factor = add_constant(gm, channels, root, f"{root.name}_factor")
    with gm.graph.inserting_before(root):
        node = gm.graph.call_function(_MUL, (branch.leaf, factor))
    node.meta.update(root.meta)
    return node


def _write_sum(graph, root: Node, terms: list[Node]) -> None:
    """Readers of `root` read the sum of `terms` instead."""
    total = terms[0]
    for term in terms[1:]:
        with graph.inserting_before(root):
            total = graph.call_function(_ADD, (total, term))
        total.meta.update(root.meta)
    root.replace_all_uses_with(total)
