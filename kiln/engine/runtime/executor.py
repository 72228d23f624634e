"""Executes a Plan: a flat list of (tactic, input slots, output slots), values freed after last use.

This is the eager executor: on the CPU it is the runtime; on CUDA it runs once per input-shape
profile to warm up and once inside CUDA-graph capture (cuda_graphs.py), and never again.

With an arena (one byte buffer laid out by builder/memory.py), tactics that can write into a
given tensor ask `arena_output(run, i)` for their i-th output and get a view of the arena at
the planned offset; the others allocate as usual.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

import kiln.engine.kernels  # noqa: F401  (registers every tactic)
from kiln.engine.ir.symbolic import evaluate_shape
from kiln.engine.ir.tensor import Layout, TensorDesc
from kiln.engine.kernels.registry import RunContext, get_tactic
from kiln.engine.plan import ArenaPlan, Plan
from kiln.errors import OutOfMemoryError


class ArenaRunContext(RunContext):
    """A RunContext that also hands out the current layer's output buffers from the arena."""

    def __init__(self, symbols: Mapping[str, int], arena: torch.Tensor, plan: ArenaPlan, tensors: Mapping[str, TensorDesc]):
        super().__init__(symbols)
        self.arena = arena
        self.plan = plan
        self.tensors = tensors
        self.current_outputs: list[str] = []

    def output(self, index: int) -> torch.Tensor | None:
        name = self.current_outputs[index]
        placed = self.plan.offsets.get(name)
        if placed is None:
            return None
        return arena_view(self.arena, placed[0], self.tensors[name], self.symbols)


def arena_output(run: RunContext, index: int) -> torch.Tensor | None:
    """The planned buffer for the running layer's `index`-th output, or None (then allocate)."""
    return run.output(index) if isinstance(run, ArenaRunContext) else None


def arena_view(arena: torch.Tensor, offset: int, desc: TensorDesc, symbols: Mapping[str, int]) -> torch.Tensor:
    shape = evaluate_shape(desc.shape, symbols)
    numel = 1
    for d in shape:
        numel *= d
    itemsize = torch.empty((), dtype=desc.dtype).element_size()
    flat = arena[offset : offset + numel * itemsize].view(desc.dtype)
    if desc.layout == Layout.CHANNELS_LAST and len(shape) == 4:
        n, c, h, w = shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(shape)


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

    def run(self, inputs: list[torch.Tensor], arena: torch.Tensor | None = None) -> list[torch.Tensor]:
        values: list = [None] * self.num_slots
        for s, v in zip(self.input_slots, inputs):
            values[s] = v
        for s, w in self.weight_values:
            values[s] = w
        symbols = self.symbols_for(inputs)
        if arena is not None and self.plan.arena is not None:
            run = ArenaRunContext(symbols, arena, self.plan.arena, self.plan.tensors)
        else:
            run = RunContext(symbols)
        for index, (fn, layer, ins, outs, frees) in enumerate(self.program):
            if isinstance(run, ArenaRunContext):
                run.current_outputs = layer.outputs
            try:
                result = fn(layer, [values[i] if i is not None else None for i in ins], run)
            except torch.OutOfMemoryError:
                # Named here, raised without the original traceback: its frames would hold this call's tensors.
                step = self.plan.steps[index]
                failed = f"layer {layer.name} ({layer.kind}, tactic {step.tactic})"
            else:
                failed = None
            if failed is not None:
                values.clear()
                raise OutOfMemoryError(f"out of GPU memory in {failed} while running the engine") from None
            if isinstance(result, torch.Tensor):
                values[outs[0]] = result
            else:
                for s, r in zip(outs, result):
                    values[s] = r
            for s in frees:
                values[s] = None
        return [values[s] for s in self.output_slots]
