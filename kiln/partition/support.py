"""Which nodes the engine can run, and why not: asked of the converter registry, never kept here."""

from __future__ import annotations

import operator

from torch.fx import Node

from kiln.engine.convert import registry
from kiln.partition.sizes import data_dependent_reason, input_symbols
from kiln.settings import CompileSettings, is_executed_in_torch

TORCH_EXECUTED = "in torch_executed_ops"


def fallback_reasons(nodes: list[Node], settings: CompileSettings) -> dict[Node, str | None]:
    """For every call_function node: None if the engine can take it, else why it stays in PyTorch."""
    reasons: dict[Node, str | None] = {}
    known = input_symbols(nodes)
    for node in nodes:
        if node.op != "call_function":
            continue
        data_dependent = data_dependent_reason(node, known)
        if data_dependent is not None and registry.support_of(node, settings.truncate_double) is None:
            reasons[node] = data_dependent
        elif node.target is operator.getitem:
            # A getitem goes where the multi-output op it reads from goes.
            reasons[node] = reasons.get(node.args[0], "input from PyTorch")
        elif is_executed_in_torch(node.target, settings):
            reasons[node] = TORCH_EXECUTED
        else:
            reasons[node] = registry.support_of(node, settings.truncate_double)
    return reasons
