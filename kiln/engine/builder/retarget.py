"""A loaded plan on another device than the one it was built for: tactics re-chosen, or re-timed, there.

A tactic's `when` is the registry's word on where it runs (Triton kernels compile for the GPU
they meet, ATen tactics dispatch at run time), so a saved tactic whose `when` holds on the new
target stays; only its speed is in doubt, which `retime=True` settles by timing every candidate
here. A saved tactic whose `when` does not hold (a CUDA kernel loaded on the CPU, a tactic this
Kiln no longer has) is replaced by the fastest applicable one the build measured, else by the
reference. On CUDA every layer then runs once on random inputs at the tuning shapes, so a tactic
that fails on this GPU falls back to the next (build.run_first_that_works) here, not mid-call.

A tactic's prepared weight ("<weight>__<tactic>", builder/build.py) is what another tactic
cannot read. The plan keeps the original's desc, and `prepare` rearranges values without
changing them, so running `prepare` on a tensor of indices [0, n) of the original's shape says
where every element went; the original is the prepared tensor put back through that map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from kiln.engine.builder.build import build_plan, original_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, Tactic, get_tactic
from kiln.engine.plan import Plan
from kiln.errors import CorruptFileError, KilnError
from kiln.settings import CompileSettings


@dataclass
class Retargeted:
    plan: Plan
    # layer name -> (tactic it was saved with, tactic it runs with now), for the layers that changed
    replaced: dict[str, tuple[str, str]]


def saved_tactics_apply(plan: Plan, device: torch.device) -> bool:
    """Whether every step's saved tactic exists here and runs on `device`."""
    target = BuildTarget(device, plan.compute_dtype)
    for step in plan.steps:
        try:
            tactic = get_tactic(step.layer.kind, step.tactic)
        except CorruptFileError:
            return False
        if not tactic.when(step.layer, target):
            return False
    return True


def retarget_plan(plan: Plan, device: torch.device, retime: bool, where: str = "engine") -> Retargeted:
    """`plan` with tactics for `device`: re-timed there with `retime`, else re-chosen only where the saved one cannot run."""
    network = unprepared_network(plan, where)
    settings = CompileSettings(
        enabled_precisions=frozenset({plan.compute_dtype, torch.float32}),
        device=torch.device(device),
        cuda_graphs=plan.cuda_graphs,
        max_cuda_graphs=plan.max_cuda_graphs,
        tune_new_shapes=plan.tune_new_shapes,
    )
    saved = {step.layer.name: step for step in plan.steps}
    target = BuildTarget(settings.device, plan.compute_dtype)

    def keep_what_applies(layer: Layer, candidates: list[Tactic]) -> tuple[list[Tactic], dict[str, float]]:
        step = saved[layer.name]
        by_name = {t.name: t for t in candidates}
        if step.tactic in by_name:
            return [by_name[step.tactic]], step.timings
        if not target.is_cuda:
            return [by_name[REFERENCE]], {}
        # The build's timings on its own GPU are the only hint of speed here; the reference where there is none.
        known = sorted((ms, name) for name, ms in step.timings.items() if name in by_name)
        return [by_name[name] for _, name in known] + [by_name[REFERENCE]], {}

    built = build_plan(network, settings, rank=None if retime else keep_what_applies)
    # Only what the tactics decide changes; every other field (runtime options, notes) stays as saved.
    new = replace(plan, steps=built.steps, weights=built.weights, tensors=built.tensors, arena=built.arena, device=built.device)
    replaced = {s.layer.name: (saved[s.layer.name].tactic, s.tactic) for s in new.steps if s.tactic != saved[s.layer.name].tactic}
    return Retargeted(new, replaced)


def unprepared_network(plan: Plan, where: str = "engine") -> Network:
    """The plan's layers as the builder saw them: every weight as it was before a tactic prepared it."""
    weights = dict(plan.weights)
    tensors = dict(plan.tensors)
    layers = []
    for step in plan.steps:
        inputs = []
        for n in step.layer.inputs:
            original = original_name(n, step.tactic) if n is not None and n in plan.weights else None
            if original is None:
                inputs.append(n)
                continue
            if original not in weights:
                weights[original] = _undo_prepare(step.layer, step.tactic, n, original, plan, where)
            inputs.append(original)
        layers.append(replace(step.layer, inputs=inputs))
    read = {n for layer in layers for n in layer.inputs if n is not None}
    constants = {n: w for n, w in weights.items() if n in read}
    tensors = {n: d for n, d in tensors.items() if d.role != "constant" or n in read}
    return Network(list(plan.inputs), list(plan.outputs), tensors, layers, constants, dict(plan.symbols))


def _undo_prepare(layer: Layer, tactic_name: str, prepared_name: str, original: str, plan: Plan, where: str) -> torch.Tensor:
    prepared = plan.weights[prepared_name]

    def cannot(why: str) -> KilnError:
        return KilnError(
            f"{where}: layer {layer.name} reads weight {original!r} as prepared for tactic {tactic_name!r}, and {why}, so "
            f"another tactic cannot take its place. Load the file on the device it was built for ({plan.device}), or "
            "compile the model again for this device."
        )

    desc = plan.tensors.get(original)
    if desc is None:
        raise cannot("the file does not record the weight's original shape (it was written by an older Kiln)")
    try:
        tactic = get_tactic(layer.kind, tactic_name)
    except CorruptFileError:
        raise cannot("this Kiln has no such tactic to say how it prepared the weight") from None
    shape = [int(d) for d in desc.shape]
    numel = math.prod(shape)
    as_built = replace(layer, inputs=[original if n == prepared_name else n for n in layer.inputs])
    if tactic.unprepare is not None:  # a prepare that changes values says itself how to undo it
        restored = tactic.unprepare(as_built, prepared)
        if list(restored.shape) != shape or restored.dtype != desc.dtype:
            raise cannot(f"its unprepare gave {list(restored.shape)} {restored.dtype}, not {shape} {desc.dtype}")
        return restored
    try:
        moved = tactic.prepare(as_built, {original: torch.arange(numel).reshape(shape)}).get(original)
    except Exception as exc:  # a prepare that refuses index tensors cannot be undone this way
        raise cannot(f"its prepare cannot be replayed ({type(exc).__name__}: {exc})") from None
    rearranges = (
        isinstance(moved, torch.Tensor)
        and moved.dtype == torch.int64
        and list(moved.shape) == list(prepared.shape)
        and torch.equal(moved.flatten().sort().values, torch.arange(numel))
    )
    if not rearranges or desc.dtype != prepared.dtype:
        raise cannot("its prepare changes values, not only their order")
    restored = torch.empty(numel, dtype=prepared.dtype, device=prepared.device)
    restored[moved.flatten().to(prepared.device)] = prepared.flatten()
    return restored.view(shape)
