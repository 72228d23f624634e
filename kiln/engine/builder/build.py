"""The builder: Network → Plan. Picks a tactic per layer and prepares weights for it."""

from __future__ import annotations

import torch

import kiln.engine.kernels  # noqa: F401  (registers every tactic)
from kiln.engine.ir.network import Network
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, tactics_for
from kiln.engine.plan import Plan, Step
from kiln.settings import CompileSettings


def build_plan(network: Network, settings: CompileSettings) -> Plan:
    target = BuildTarget(settings.device, settings.compute_dtype)
    steps = []
    weights = {name: value.to(settings.device) for name, value in network.constants.items()}
    for layer in network.layers:
        candidates = tactics_for(layer, target)
        # Without a GPU to time on, the reference is the only trustworthy choice.
        chosen = next((t for t in candidates if t.name == REFERENCE), candidates[0])
        steps.append(Step(layer, chosen.name))
    return Plan(
        inputs=list(network.inputs),
        outputs=list(network.outputs),
        tensors=dict(network.tensors),
        steps=steps,
        weights=weights,
        symbols=dict(network.symbols),
        device=str(settings.device),
        compute_dtype=settings.compute_dtype,
    )


def plan_device(plan: Plan) -> torch.device:
    return torch.device(plan.device)
