"""EngineModule: one engine block as a torch.nn.Module inside the compiled graph."""

from __future__ import annotations

import torch

from kiln.engine.plan import Plan
from kiln.engine.runtime import PlanExecutor


class EngineModule(torch.nn.Module):
    def __init__(self, plan: Plan, name: str = "engine"):
        super().__init__()
        self.plan = plan
        self.name = name
        self.executor = PlanExecutor(plan)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.executor.run(list(inputs)))

    def extra_repr(self) -> str:
        return f"{self.name}: {len(self.plan.steps)} layers on {self.plan.device}"
