"""Partitioning: group engine-supported nodes into blocks; small blocks go back to PyTorch."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

from torch.fx import GraphModule, Node
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

from kiln.errors import UnsupportedOpError
from kiln.partition.sizes import outside_numbers, unreadable_sizes
from kiln.partition.support import fallback_reasons
from kiln.settings import CompileSettings, op_name

BLOCK_PREFIX = "_engine_block_"


@dataclass
class NodeRow:
    """One row of the partition report."""

    node: str
    op: str
    where: str  # "engine" or "pytorch"
    reason: str = ""
    block: str = ""


@dataclass
class PartitionResult:
    graph_module: GraphModule
    block_names: list[str]
    rows: list[NodeRow] = field(default_factory=list)


class _Supported(OperatorSupportBase):
    def __init__(self, reasons: dict[Node, str | None]):
        self.reasons = reasons

    def is_node_supported(self, submodules, node: Node) -> bool:
        return node.op == "call_function" and self.reasons.get(node, "not an op") is None


def counted_ops(nodes) -> int:
    """Ops that count toward min_block_size: getitem only unpacks, so it does not count."""
    return sum(1 for n in nodes if n.op == "call_function" and n.target is not operator.getitem)


def _refuse_if_full(settings: CompileSettings, unsupported: dict[Node, str]) -> None:
    if not settings.require_full_compilation or not unsupported:
        return
    lines = "\n".join(f"  {n.name:<28} {op_name(n.target):<40} {r}" for n, r in unsupported.items())
    raise UnsupportedOpError(
        f"require_full_compilation=True, but {len(unsupported)} op(s) cannot run on the Kiln engine:\n{lines}\n"
        "What to do: set require_full_compilation=False to run them in PyTorch, or remove them from "
        "torch_executed_ops / rewrite them with supported ops."
    )


def partition(gm: GraphModule, settings: CompileSettings) -> PartitionResult:
    nodes = list(gm.graph.nodes)
    reasons = fallback_reasons(nodes, settings)
    _refuse_if_full(settings, {n: r for n, r in reasons.items() if r is not None})
    min_size = 1 if settings.require_full_compilation else settings.min_block_size
    # A block may not pass a number across its border nor use a size it cannot read from its inputs;
    # each round sends the nodes that would to PyTorch and proposes the blocks again, until none
    # does (each round removes at least one node).
    while True:
        proposed = CapabilityBasedPartitioner(gm, _Supported(reasons), allows_single_node_partition=True).propose_partitions()
        kept, small = [], {}
        for part in sorted(proposed, key=lambda p: min(nodes.index(n) for n in p.nodes)):
            size = counted_ops(part.nodes)
            if size < min_size:
                small.update(dict.fromkeys(part.nodes, f"block of {size} op(s) < min_block_size={settings.min_block_size}"))
            else:
                kept.append(part)
        outside = {n: r for part in kept for n, r in outside_numbers(set(part.nodes)).items()}
        outside = outside or {n: r for part in kept for n, r in unreadable_sizes(set(part.nodes)).items()}
        if not outside:
            break
        _refuse_if_full(settings, outside)
        reasons.update(outside)
    reasons.update(small)
    block_of: dict[Node, str] = {}
    fuse_groups = []
    for i, part in enumerate(kept):
        group = dict(part.nodes)
        # Weights used only inside the block become its constants, not its inputs.
        for n in list(group):
            for arg in n.all_input_nodes:
                if arg.op == "get_attr" and all(u in group for u in arg.users):
                    group[arg] = None
        fuse_groups.append(group)
        for n in group:
            block_of[n] = f"{BLOCK_PREFIX}{i}"
    rows = [
        NodeRow(n.name, op_name(n.target), "engine" if n in block_of else "pytorch", reasons.get(n) or "", block_of.get(n, ""))
        for n in nodes
        if n.op == "call_function"
    ]
    if fuse_groups:
        gm = fuse_by_partitions(gm, fuse_groups, prefix=BLOCK_PREFIX, always_return_tuple=True)
    return PartitionResult(gm, [f"{BLOCK_PREFIX}{i}" for i in range(len(fuse_groups))], rows)
