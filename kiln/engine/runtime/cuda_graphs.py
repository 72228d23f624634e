"""CUDA-graph runtime: a Plan recorded once per input-shape profile, then replayed.

A call costs one copy per input into the graph's static input buffer, one graph replay, and
one clone per output: no Python per layer, no allocation inside the replayed work.

Graph cache. Keyed by the tuple of input shapes (symbol values follow from them through
RunContext, so a dynamic-shape plan gets one graph per distinct shape). Bounded by
Plan.max_cuda_graphs: the least recently used graph is dropped past that; a dropped shape is
recorded again on its next call (a warm-up run plus a capture, a few ms for a CNN).

Memory. Activations live in two places, both outside the replay's control flow:
- The arena: one uint8 buffer of Plan.arena.size bytes, planned from tensor lifetimes at the
  max symbol values (builder/memory.py). Tactics that can write into a given tensor (out=
  variants: kernels/aten_matmul.py, kernels/aten_pointwise.py) get their output as a view at the
  planned offset. One arena per engine serves every recorded shape.
- The graph pool: tactics that must allocate (cuDNN convolution, SDPA, most PyTorch ops have
  no out= form) allocate during capture from a CUDA-graph private memory pool. The executor
  frees each value after its last use during capture, so the caching allocator reuses those
  blocks in lifetime order, as the arena plan does; at replay nothing is allocated at all.
  Every graph of an engine shares one pool: graphs are replayed one at a time on the caller's
  stream and their outputs are cloned before another replay, so the scratch memory of one
  graph may safely be another's.

Tuning. The builder timed every tactic at the opt shape (and a ranged engine's at min and max
too), and the graphs recorded for those shapes let cuDNN search its algorithms
(cudnn.benchmark) as the builder's timing did. Any other shape is recorded with cuDNN's
heuristic choice: its first call costs a warm-up, cuDNN's per-shape plan construction and a
capture (~150 ms for a ResNet-50 on an H100, about what eager PyTorch pays at a new shape),
not a search of every conv's algorithms (~500 ms). CompileSettings.tune_new_shapes=True
searches at every new shape instead.

Outputs are cloned after replay: the graph writes its outputs to the same addresses on every
replay, so a caller that keeps an output across calls would otherwise see it overwritten by
the next call. The clone costs one device copy per output (a few microseconds for a logits
tensor) and buys plain PyTorch semantics: every call returns tensors of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from kiln.engine.builder.timing import cudnn_autotune
from kiln.engine.ir.symbol_values import tuning_points
from kiln.engine.ir.symbolic import evaluate_shape
from kiln.engine.ir.tensor import Layout
from kiln.engine.runtime.executor import PlanExecutor

Shapes = tuple[tuple[int, ...], ...]


@dataclass
class RecordedGraph:
    graph: torch.cuda.CUDAGraph
    static_inputs: list[torch.Tensor]
    static_outputs: list[torch.Tensor]


class CudaGraphRunner:
    """Runs a PlanExecutor's plan through CUDA graphs, one per input-shape profile (LRU-bounded)."""

    def __init__(self, executor: PlanExecutor, max_graphs: int):
        self.executor = executor
        self.max_graphs = max(1, max_graphs)
        self.graphs: OrderedDict[Shapes, RecordedGraph] = OrderedDict()
        self.pool = None
        self.arena: torch.Tensor | None = None
        self.records = 0
        plan = executor.plan
        self.tuned_shapes: set[Shapes] = {
            tuple(tuple(evaluate_shape(plan.tensors[name].shape, point)) for name in plan.inputs) for point in tuning_points(plan.symbols)
        }

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        key = tuple(tuple(x.shape) for x in inputs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._record(inputs, key)
        else:
            self.graphs.move_to_end(key)
        for static, x in zip(entry.static_inputs, inputs):
            static.copy_(x)
        entry.graph.replay()
        return [out.clone() for out in entry.static_outputs]

    def _record(self, inputs: list[torch.Tensor], key: Shapes) -> RecordedGraph:
        plan = self.executor.plan
        device = inputs[0].device if inputs else torch.device(plan.device)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        if self.arena is None and plan.arena is not None and plan.arena.size:
            self.arena = torch.empty(plan.arena.size, dtype=torch.uint8, device=device)
        # Static inputs are plain allocations outside the pool: they must outlive every replay.
        with torch.inference_mode(False), torch.no_grad():
            static = [_static_like(x, plan.tensors[name].layout) for x, name in zip(inputs, plan.inputs)]
            for s, x in zip(static, inputs):
                s.copy_(x)
            tune = plan.tune_new_shapes or key in self.tuned_shapes
            with cudnn_autotune(tune):
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    # Warm-up outside capture: cuDNN/cuBLAS algorithm search and lazy init must not be recorded.
                    self.executor.run(static, self.arena)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    outputs = self.executor.run(static, self.arena)
        entry = RecordedGraph(graph, static, outputs)
        self.graphs[key] = entry
        self.records += 1
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return entry


def _static_like(x: torch.Tensor, layout: str) -> torch.Tensor:
    fmt = torch.channels_last if layout == Layout.CHANNELS_LAST and x.dim() == 4 else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
