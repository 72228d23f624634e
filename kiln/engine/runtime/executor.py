"""Executes a Plan: a flat list of (tactic, input slots, output slots), values freed after last use."""

from __future__ import annotations

import torch

import kiln.engine.kernels  # noqa: F401  (registers every tactic)
from kiln.engine.kernels.registry import RunContext, get_tactic
from kiln.engine.plan import Plan


class PlanExecutor:
    def __init__(self, plan: Plan):
        self.plan = plan
        slot: dict[str, int] = {}
        for name in [*plan.inputs, *plan.weights, *(o for s in plan.steps for o in s.layer.outputs)]:
            slot.setdefault(name, len(slot))
        self.num_slots = len(slot)
        self.input_slots = [slot[n] for n in plan.inputs]
        self.output_slots = [slot[n] for n in plan.outputs]
        self.weight_values = [(slot[n], w) for n, w in plan.weights.items()]
        last_use: dict[int, int] = {}
        for i, step in enumerate(plan.steps):
            for n in step.layer.inputs:
                if n is not None:
                    last_use[slot[n]] = i
        keep = set(self.output_slots) | {s for s, _ in self.weight_values}
        self.program = []
        for i, step in enumerate(plan.steps):
            fn = get_tactic(step.layer.kind, step.tactic).fn
            ins = [slot[n] if n is not None else None for n in step.layer.inputs]
            outs = [slot[n] for n in step.layer.outputs]
            frees = [s for s, last in last_use.items() if last == i and s not in keep]
            self.program.append((fn, step.layer, ins, outs, frees))
        self.symbol_sources = {name: sym.sources for name, sym in plan.symbols.items()}

    def symbols_for(self, inputs: list[torch.Tensor]) -> dict[str, int]:
        return {name: inputs[src[0][0]].shape[src[0][1]] for name, src in self.symbol_sources.items() if src}

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        values: list = [None] * self.num_slots
        for s, v in zip(self.input_slots, inputs):
            values[s] = v
        for s, w in self.weight_values:
            values[s] = w
        run = RunContext(self.symbols_for(inputs))
        for fn, layer, ins, outs, frees in self.program:
            result = fn(layer, [values[i] if i is not None else None for i in ins], run)
            if isinstance(result, torch.Tensor):
                values[outs[0]] = result
            else:
                for s, r in zip(outs, result):
                    values[s] = r
            for s in frees:
                values[s] = None
        return [values[s] for s in self.output_slots]
