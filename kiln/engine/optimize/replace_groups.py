"""What the chain-matching fusion passes share: the one reader a chain may continue to, and writing the
matched groups back as their fused layers, in place."""

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


def only_reader(network: Network, readers: dict, value: str) -> Layer | None:
    """The single layer reading `value` when a chain may pass through it (not a network output, one reader
    with one output), else None. `readers` is network.consumers()."""
    users = readers.get(value, [])
    if value in network.outputs or len(users) != 1 or len(users[0].outputs) != 1:
        return None
    return users[0]
