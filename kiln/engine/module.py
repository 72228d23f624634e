"""EngineModule: one engine block as a torch.nn.Module inside the compiled graph.

On CUDA (and Plan.cuda_graphs) a call replays the CUDA graph recorded for its input shapes
(runtime/cuda_graphs.py) on the caller's current stream: outputs are fresh tensors on every
call, never views of engine buffers, and any number of threads and streams may call at once.
Elsewhere, or while torch.compile traces through it, the plan runs eagerly; that path keeps
no state between calls, so it is thread-safe as it is.
"""

from __future__ import annotations

import torch

from kiln.engine.plan import Plan
from kiln.engine.runtime import CudaGraphRunner, PlanExecutor


class EngineModule(torch.nn.Module):
    def __init__(self, plan: Plan, name: str = "engine"):
        super().__init__()
        self.plan = plan
        self.name = name
        self.executor = PlanExecutor(plan)
        self.use_cuda_graphs = plan.cuda_graphs and torch.device(plan.device).type == "cuda"
        self.graphs = CudaGraphRunner(self.executor, plan.max_cuda_graphs, plan.max_execution_contexts) if self.use_cuda_graphs else None

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.graphs is not None and not _capturing_or_tracing():
            return tuple(self.graphs(list(inputs)))
        return tuple(self.executor.run(list(inputs)))

    def profile(self, *inputs: torch.Tensor):
        """Per-layer GPU times of this engine on these inputs (runtime/profiler.py)."""
        from kiln.engine.runtime.profiler import profile_engine

        return profile_engine(self, list(inputs))

    def extra_repr(self) -> str:
        graphs = f", {sum(len(c.graphs) for c in self.graphs.contexts)} CUDA graph(s)" if self.graphs is not None else ""
        return f"{self.name}: {len(self.plan.steps)} layers on {self.plan.device}{graphs}"


def _capturing_or_tracing() -> bool:
    # Inside someone else's graph capture (a user's CUDA graph around the compiled module) or a
    # torch.compile trace, replaying our own graph would nest captures: run the steps instead.
    return torch.cuda.is_current_stream_capturing() or torch.compiler.is_compiling()
