"""What a compiled module holds in device memory, by kind: `compiled.memory()`.

- weights: every tensor the plans read (prepared copies included), counted once per storage;
- arena: each execution context's activation arena (runtime/cuda_graphs.py);
- graph pools: the CUDA-graph private memory pools of the contexts, as the caching allocator's
  segments that belong to each pool (read from torch.cuda.memory_snapshot);
- static inputs: the recorded graphs' input buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MemoryReport:
    weights: int = 0
    arena: int = 0
    graph_pools: int = 0
    static_inputs: int = 0
    contexts: int = 0
    graphs: int = 0
    per_engine: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.arena + self.graph_pools + self.static_inputs

    def to_json(self) -> dict:
        return {
            "weights": self.weights,
            "arena": self.arena,
            "graph_pools": self.graph_pools,
            "static_inputs": self.static_inputs,
            "total": self.total,
            "contexts": self.contexts,
            "graphs": self.graphs,
            "per_engine": self.per_engine,
        }

    def table(self) -> str:
        mb = lambda b: f"{b / 2**20:,.1f} MB"
        rows = [
            ("weights", self.weights),
            (f"activation arenas ({self.contexts} execution context(s))", self.arena),
            (f"CUDA-graph pools ({self.graphs} graph(s))", self.graph_pools),
            ("graph input buffers", self.static_inputs),
            ("total", self.total),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {mb(size):>12}" for name, size in rows)

    def __str__(self) -> str:
        return self.table()


def memory_report(engines: dict) -> MemoryReport:
    report = MemoryReport()
    seen: set[int] = set()
    pools: dict[tuple, str] = {}
    for name, engine in engines.items():
        own = {"weights": 0, "arena": 0, "static_inputs": 0, "graph_pools": 0}
        for w in engine.plan.weights.values():
            if w.device.type == "cpu" and torch.device(engine.plan.device).type != "cpu":
                continue
            key = w.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                own["weights"] += w.untyped_storage().nbytes()
        runner = engine.graphs
        for ctx in runner.contexts if runner is not None else []:
            report.contexts += 1
            if ctx.arena is not None:
                own["arena"] += ctx.arena.numel()
            for entry in ctx.graphs.values():
                report.graphs += 1
                own["static_inputs"] += sum(x.untyped_storage().nbytes() for x in entry.static_inputs)
            if ctx.pool is not None:
                pools[tuple(ctx.pool)] = name
        report.per_engine[name] = own
    if pools and torch.cuda.is_available():
        for segment in torch.cuda.memory_snapshot():
            owner = pools.get(tuple(segment.get("segment_pool_id", ())))
            if owner is not None:
                report.per_engine[owner]["graph_pools"] += segment["total_size"]
    for own in report.per_engine.values():
        report.weights += own["weights"]
        report.arena += own["arena"]
        report.static_inputs += own["static_inputs"]
        report.graph_pools += own["graph_pools"]
    return report
