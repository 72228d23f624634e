"""Which tactics of a layer the builder compiles and times: every one that applies, less those known not to win.

Each Triton config of a template is a compile on a cold build (about a second of ptxas each on an
H100 host) and a timing. Where measurements say which configs can win at a layer's size, or where
two configs launch the very same kernel, the others are not offered. A rule is one decorated
function per layer kind, `fn(network, layer, offered, points) -> offered`, and cites what it rests
on. The reference and non-Triton tactics are never removed here, so every layer keeps a choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.symbolic import evaluate_shape
from kiln.engine.kernels import triton_depthwise
from kiln.engine.kernels.registry import BuildTarget, Tactic, tactics_for

Rule = Callable[[Network, Layer, list[Tactic], list[dict[str, int]]], list[Tactic]]
_RULES: dict[str, list[Rule]] = {}


def candidate_rule(*kinds: str):
    """Register `fn(network, layer, offered, points) -> offered` for layers of `kinds`."""

    def register(fn: Rule) -> Rule:
        for kind in kinds:
            _RULES.setdefault(kind, []).append(fn)
        return fn

    return register


def candidates(network: Network, layer: Layer, target: BuildTarget, points: list[dict[str, int]]) -> list[Tactic]:
    """The tactics the builder compiles and times for `layer` at the tuning `points`."""
    offered = tactics_for(layer, target)
    for rule in _RULES.get(layer.kind, ()):
        offered = rule(network, layer, offered, points)
    return offered


def largest_output(network: Network, layer: Layer, points: list[dict[str, int]]) -> int:
    """Elements of the layer's first output at the largest tuning point."""
    shape = network.tensors[layer.outputs[0]].shape
    return max(math.prod(evaluate_shape(shape, point)) for point in points or [{}])


# The triton_depthwise configs by tactic name: the conv/conv_epilogue tactics are named as in CONFIGS, and the
# depthwise_norm layer's unfused pair runs the same tiles as "<name>_unfused" (kernels/depthwise_norm.py).
DEPTHWISE_TILES = {**triton_depthwise.CONFIGS, **{f"{n}_unfused": c for n, c in triton_depthwise.CONFIGS.items()}}

# Up to this many output elements (EfficientNet-b0's first depthwise conv at batch 1: 112 x 112 x 32) only
# the 32 x 32 and 64 x 32 tiles are offered. On the H100 at the batch-1 shapes measured, one of those two was
# the fastest config or within 0.3% of it (docs/benchmarks/2026-11-25-h100-session4/kernel-sweeps/dw.jsonl:
# ConvNeXt-T stage 1 8.01 us for 64 x 32 against 8.30 for 32 x 64 and 11.56 for 8 x 128; EfficientNet 112 x 112
# 3.71 against 3.70 and 3.71; session3/kernel-sweeps/depthwise_ms.jsonl: 32 x 32 the fastest of all at both),
# while 8 x 128 lost by up to 93% (7.9 against 4.1 us). 32 x 64 and 8 x 128 win only at large batch
# (8 x 128 at 384 channels, batch 128), which stays above this size.
SMALL_DEPTHWISE_ELEMENTS = 112 * 112 * 32
SMALL_DEPTHWISE_TILES = ("triton_depthwise", "triton_depthwise_64x32")


@candidate_rule("conv", "conv_epilogue", "depthwise_norm")
def depthwise_tiles(network: Network, layer: Layer, offered: list[Tactic], points: list[dict[str, int]]) -> list[Tactic]:
    """Small depthwise layers get the tiles that win at batch 1; configs that launch the same kernel are offered once.

    block_sizes narrows a tile's channel width to the layer's channels and grows its pixels to keep the
    tile's size, so at 32 channels or fewer 32 x 64 becomes 64 x 32 and 8 x 128 becomes 32 x 32: the same
    kernel at the same launch, timed twice for nothing."""
    tiled = [t for t in offered if t.name in DEPTHWISE_TILES]
    weight = network.tensors.get(layer.inputs[1]) if len(layer.inputs) > 1 and layer.inputs[1] is not None else None
    if not tiled or weight is None or not isinstance(weight.shape[0], int):
        return offered
    small = largest_output(network, layer, points) <= SMALL_DEPTHWISE_ELEMENTS
    launches, keep = set(), set()
    for tactic in tiled:
        if small and tactic.name.removesuffix("_unfused") not in SMALL_DEPTHWISE_TILES:
            continue
        launch = triton_depthwise.block_sizes(weight.shape[0], DEPTHWISE_TILES[tactic.name])
        if launch not in launches:
            launches.add(launch)
            keep.add(tactic.name)
    return [t for t in offered if t.name not in DEPTHWISE_TILES or t.name in keep]
