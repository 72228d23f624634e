"""Per-layer profiler: where an engine's GPU time goes.

Each step of a plan is timed alone on its real inputs (the activations of this call), with
the builder's method: several calls recorded into a CUDA graph, median of replays between
CUDA events. So a row is the layer's GPU time without launch overhead, the cost it has inside
the engine's own graph. The sum of the rows next to the measured time of a whole engine call
shows what the per-call overhead (input copy, output clone, gaps between kernels) adds.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from kiln.engine.builder.timing import cudnn_autotune, time_on_gpu
from kiln.engine.kernels.registry import RunContext
from kiln.report.fused_groups import fused_group
from kiln.report.table import format_table


@dataclass
class LayerTime:
    engine: str
    layer: str
    kind: str
    tactic: str
    shape: str
    ms: float
    # What a fused layer computes ("conv+add+relu"; report/fused_groups.py), so its row is the time of that group.
    fused: str = ""


@dataclass
class Profile:
    rows: list[LayerTime] = field(default_factory=list)
    # engine name -> measured ms of one whole call of the engine (CUDA-graph replay + copies)
    engine_ms: dict[str, float] = field(default_factory=dict)
    # ms of one whole call of the compiled module, when profiled through kiln.profile
    total_ms: float | None = None

    def by_kind(self) -> list[tuple[str, int, float]]:
        sums: dict[str, list] = defaultdict(lambda: [0, 0.0])
        for r in self.rows:
            sums[r.kind][0] += 1
            sums[r.kind][1] += r.ms
        return sorted(((k, n, ms) for k, (n, ms) in sums.items()), key=lambda t: -t[2])

    def table(self, top: int | None = 40) -> str:
        layer_sum = sum(r.ms for r in self.rows) or 1.0
        ranked = sorted(self.rows, key=lambda r: -r.ms)
        shown = ranked if top is None else ranked[:top]
        body = format_table(
            ["layer", "kind", "fused ops", "tactic", "output", "ms", "%"],
            [[r.layer, r.kind, r.fused, r.tactic, r.shape, f"{r.ms:.4f}", f"{100 * r.ms / layer_sum:.1f}"] for r in shown],
        )
        kinds = format_table(
            ["kind", "layers", "ms", "%"], [[k, n, f"{ms:.4f}", f"{100 * ms / layer_sum:.1f}"] for k, n, ms in self.by_kind()]
        )
        head = [f"Kiln per-layer profile: {len(self.rows)} layers, sum of layer GPU times {layer_sum:.3f} ms"]
        for name, ms in self.engine_ms.items():
            head.append(f"  {name}: one engine call {ms:.3f} ms")
        if self.total_ms is not None:
            head.append(f"  whole compiled module: {self.total_ms:.3f} ms per call")
        more = f"\n(top {top} of {len(self.rows)} layers)" if top is not None and len(ranked) > top else ""
        return "\n".join(head) + "\n" + body + more + "\nBy kind:\n" + kinds

    def to_json(self) -> dict:
        return {
            "rows": [r.__dict__ for r in self.rows],
            "engine_ms": self.engine_ms,
            "total_ms": self.total_ms,
            "by_kind": [list(t) for t in self.by_kind()],
        }

    def __str__(self) -> str:
        return self.table()


def profile_engine(engine, inputs: list[torch.Tensor], profile: Profile | None = None) -> Profile:
    profile = profile or Profile()
    if not inputs or inputs[0].device.type != "cuda":
        raise RuntimeError("the Kiln profiler times layers on the GPU; run the engine on CUDA inputs")
    executor = engine.executor
    values: list = [None] * executor.num_slots
    for s, v in zip(executor.input_slots, inputs):
        values[s] = v
    for s, w in executor.weight_values:
        values[s] = w
    run = RunContext(executor.symbols_for(inputs))
    with torch.no_grad(), cudnn_autotune():
        for (fn, layer, ins, outs, frees), step in zip(executor.program, executor.plan.steps):
            args = [values[i] if i is not None else None for i in ins]
            ms = time_on_gpu(lambda f=fn, lay=layer, a=args: f(lay, a, run))
            result = fn(layer, args, run)
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            for s, r in zip(outs, results):
                values[s] = r
            shape = "x".join(str(d) for d in results[0].shape) if results else ""
            profile.rows.append(LayerTime(engine.name, layer.name, layer.kind, step.tactic, shape, ms, fused_group(layer)))
            for s in frees:
                values[s] = None
        profile.engine_ms[engine.name] = measure_call(lambda: engine(*inputs))
    return profile


def profile(compiled: torch.nn.Module, *args, **kwargs) -> Profile:
    """Profile every engine block of a compiled module on these inputs; print `.table()` to read it."""
    from kiln.engine.module import EngineModule

    engines = [m for m in compiled.modules() if isinstance(m, EngineModule)]
    seen: dict[EngineModule, list[torch.Tensor]] = {}

    def remember(module, inputs):
        seen.setdefault(module, list(inputs))
        # A forward pre-hook that returns a value replaces the inputs: return nothing.

    hooks = [e.register_forward_pre_hook(remember) for e in engines]
    try:
        with torch.no_grad():
            compiled(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    result = Profile()
    for engine in engines:
        if engine in seen:
            profile_engine(engine, seen[engine], result)
    with torch.no_grad():
        result.total_ms = measure_call(lambda: compiled(*args, **kwargs))
    return result


def measure_call(fn, warmup: int = 5, iters: int = 30) -> float:
    """Median ms of a whole call, host work included (synchronised before each call)."""
    return statistics.median(call_times(fn, warmup, iters))


def call_times(fn, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of `iters` calls after `warmup` calls, each timed alone with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times
