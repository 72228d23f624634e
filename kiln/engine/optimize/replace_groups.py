"""How a fusion pass writes its result back: each group of layers becomes its fused layer(s), in place."""

from __future__ import annotations

from kiln.engine.ir.network import Layer, Network


def replace_groups(network: Network, fusions: list[tuple[list[Layer], Layer | list[Layer]]]) -> Network:
    """For each (members, fused): the fused layer (or layers) take the last member's place and the other
    members go. The last member is the one every later reader follows, so order stays topological."""
    at_last = {members[-1].name: fused if isinstance(fused, list) else [fused] for members, fused in fusions}
    gone = {m.name for members, _ in fusions for m in members[:-1]}
    if at_last:
        network.layers = [new for layer in network.layers if layer.name not in gone for new in at_last.get(layer.name, [layer])]
    return network
