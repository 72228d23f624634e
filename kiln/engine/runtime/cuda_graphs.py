"""CUDA-graph runtime: a Plan recorded once per input-shape profile, then replayed.

A call costs one copy per input into the graph's static input buffer, one graph replay, and
one clone per output: no Python per layer, no allocation inside the replayed work.

Concurrency. A recorded graph owns fixed buffers (its static inputs, the arena, its outputs
and the scratch memory of its pool), so two calls that replay buffers of one graph at the same
time on the GPU would read each other's inputs. The runner therefore keeps a small pool of
ExecutionContexts (TensorRT's model: one execution context per stream). A context is one set
of buffers: an arena, a graph memory pool and its own recorded graphs. A call
- takes the context bound to its CUDA stream (the current stream of the calling thread),
  or, if the stream has none yet, a new one while fewer than `max_contexts` exist, or else the
  least recently used one (rebinding it);
- holds the context's lock only while it enqueues copy-in, replay and clone-out, so host
  threads never interleave their enqueues into one context's buffers;
- makes its stream wait on the event the context's previous call recorded after its clones,
  so a context used from another stream is never overwritten while that work is in flight.
Calls on one stream thus serialise on the GPU in the order they were made, as the stream
orders them anyway; calls on different streams run on different contexts and overlap, up to
`max_contexts` streams, past which streams share contexts and wait for each other: always
correct, never deadlocked (one lock held at a time, events never wait on the host).

Recording (a warm-up run and a capture) is exclusive: while one thread records, no other
thread enqueues work through a Kiln runtime (replays hold the shared side of one process-wide
reader-writer lock, recording its exclusive side). Replays running beside a capture made it
fail on the H100 ("capturing stream has unjoined work": the caching allocator's cross-stream
bookkeeping touched the capture), and a first call per shape and context is rare enough
that pausing the others for its few milliseconds costs nothing that matters.

Graph cache. Per context, keyed by the tuple of input shapes (symbol values follow from them
through RunContext, so a dynamic-shape plan gets one graph per distinct shape). Bounded by
Plan.max_cuda_graphs per context: the least recently used graph is dropped past that; a
dropped shape is recorded again on its next call (a warm-up run plus a capture).

Memory. Activations live in two places per context, both outside the replay's control flow:
- The arena: one uint8 buffer of Plan.arena.size bytes, planned from tensor lifetimes at the
  max symbol values (builder/memory.py). Tactics that can write into a given tensor get their
  output as a view at the planned offset. One arena per context serves every recorded shape.
- The graph pool: tactics that must allocate (cuDNN convolution, SDPA, most PyTorch ops have
  no out= form) allocate during capture from the context's private CUDA-graph memory pool. The
  executor frees each value after its last use during capture, so the allocator reuses those
  blocks in lifetime order; at replay nothing is allocated. The graphs of one context share its
  pool: they are replayed one at a time (the event chain above) and their outputs are cloned
  before another replay, so the scratch memory of one graph may safely be another's. Graphs of
  different contexts never share a pool, because they may run at the same time.

Tuning. The builder timed every tactic at the opt shape (and a ranged engine's at min and max
too), and the graphs recorded for those shapes let cuDNN search its algorithms
(cudnn.benchmark) as the builder's timing did. Any other shape is recorded with cuDNN's
heuristic choice: its first call costs a warm-up, cuDNN's per-shape plan construction and a
capture, not a search of every conv's algorithms. CompileSettings.tune_new_shapes=True
searches at every new shape instead.

Outputs are cloned after replay: the graph writes its outputs to the same addresses on every
replay, so a caller that keeps an output across calls would otherwise see it overwritten by
the next call. The clone costs one device copy per output and buys plain PyTorch semantics:
every call returns tensors of its own.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from kiln.engine.builder.timing import cudnn_autotune
from kiln.engine.ir.symbol_values import tuning_points
from kiln.engine.ir.symbolic import evaluate_shape
from kiln.engine.ir.tensor import Layout
from kiln.engine.runtime.executor import PlanExecutor
from kiln.errors import OutOfMemoryError

Shapes = tuple[tuple[int, ...], ...]



class SharedExclusiveLock:
    """Many holders of the shared side, or one of the exclusive side; a waiting exclusive holder goes first."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting_exclusive += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


# Replays enqueue under the shared side, recording under the exclusive side (see the docstring).
# One recording at a time also keeps cudnn.benchmark, a global flag the warm-up sets, to itself.
_GPU_WORK = SharedExclusiveLock()

# Streams that may run one engine at the same time before they start sharing buffers: each
# context costs an arena and a graph pool, so this bounds memory at (contexts x one engine).
DEFAULT_MAX_CONTEXTS = 4


@dataclass
class RecordedGraph:
    graph: torch.cuda.CUDAGraph
    static_inputs: list[torch.Tensor]
    static_outputs: list[torch.Tensor]


@dataclass(eq=False)
class ExecutionContext:
    """One set of buffers a call runs in: arena, graph pool, and the graphs recorded over them."""

    stream: torch.cuda.Stream
    lock: threading.Lock = field(default_factory=threading.Lock)
    graphs: OrderedDict[Shapes, RecordedGraph] = field(default_factory=OrderedDict)
    pool: object = None
    arena: torch.Tensor | None = None
    # Recorded on the stream of the last call after its outputs were cloned: the buffers are free after it.
    done: torch.cuda.Event | None = None


class CudaGraphRunner:
    """Runs a PlanExecutor's plan through CUDA graphs: per execution context, one graph per input-shape profile."""

    def __init__(self, executor: PlanExecutor, max_graphs: int, max_contexts: int = DEFAULT_MAX_CONTEXTS):
        self.executor = executor
        self.max_graphs = max(1, max_graphs)
        self.max_contexts = max(1, max_contexts)
        self.contexts: list[ExecutionContext] = []
        self._choosing = threading.Lock()
        self._records = 0
        plan = executor.plan
        self.tuned_shapes: set[Shapes] = {
            tuple(tuple(evaluate_shape(plan.tensors[name].shape, point)) for name in plan.inputs) for point in tuning_points(plan.symbols)
        }

    @property
    def records(self) -> int:
        """How many graphs were recorded so far, over every context."""
        return self._records

    @property
    def graphs(self) -> OrderedDict[Shapes, RecordedGraph]:
        """The graphs of the first context (the only one when a single stream calls)."""
        return self.contexts[0].graphs if self.contexts else OrderedDict()

    @property
    def arena(self) -> torch.Tensor | None:
        return self.contexts[0].arena if self.contexts else None

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        device = inputs[0].device if inputs else torch.device(self.executor.plan.device)
        stream = torch.cuda.current_stream(device)
        ctx = self._acquire(stream)
        try:
            key = tuple(tuple(x.shape) for x in inputs)
            if key not in ctx.graphs:
                with _GPU_WORK.exclusive():
                    if ctx.done is not None:
                        stream.wait_event(ctx.done)
                    self._record_or_explain(ctx, inputs, key, device)
            with _GPU_WORK.shared():
                if ctx.done is not None:
                    stream.wait_event(ctx.done)
                entry = ctx.graphs[key]
                ctx.graphs.move_to_end(key)
                for static, x in zip(entry.static_inputs, inputs):
                    static.copy_(x)
                entry.graph.replay()
                outputs = [out.clone() for out in entry.static_outputs]
                if ctx.done is None:
                    ctx.done = torch.cuda.Event()
                ctx.done.record(stream)
            return outputs
        finally:
            ctx.lock.release()

    def _acquire(self, stream: torch.cuda.Stream) -> ExecutionContext:
        """The context this call runs in, locked. Only `_choosing` is held while looking, so no lock-order cycle."""
        with self._choosing:
            own = next((c for c in self.contexts if c.stream == stream), None)
            if own is None and len(self.contexts) < self.max_contexts:
                own = ExecutionContext(stream)
                self.contexts.append(own)
            if own is None:
                own = next((c for c in self.contexts if c.lock.acquire(blocking=False)), None)
                if own is not None:
                    own.stream = stream
                    self._to_back(own)
                    return own
                own = self.contexts[0]  # every context busy: queue on the least recently rebound one
                own.stream = stream
            self._to_back(own)
        own.lock.acquire()
        return own

    def _to_back(self, ctx: ExecutionContext) -> None:
        self.contexts.remove(ctx)
        self.contexts.append(ctx)

    def _record_or_explain(self, ctx: ExecutionContext, inputs: list[torch.Tensor], key: Shapes, device: torch.device) -> None:
        """Record, or on running out of memory free what the attempt took and say what to do."""
        try:
            self._record(ctx, inputs, key, device)
            return
        except (torch.OutOfMemoryError, OutOfMemoryError) as exc:
            where = str(exc).split(" while ")[0] if isinstance(exc, OutOfMemoryError) else "out of GPU memory"
        if not ctx.graphs:  # a context with no graph keeps nothing worth its arena and pool
            ctx.arena = None
            ctx.pool = None
        gc.collect()
        torch.cuda.empty_cache()
        held = sum(len(c.graphs) for c in self.contexts)
        raise OutOfMemoryError(
            f"{where} while recording a CUDA graph for input shapes {list(key)} on {device} "
            f"({held} graph(s) already held in {len(self.contexts)} execution context(s)). Call with smaller inputs, "
            "compile with a smaller max_shape, or with fewer max_cuda_graphs / max_execution_contexts, or "
            "cuda_graphs=False; the memory this attempt took has been released."
        ) from None

    def _record(self, ctx: ExecutionContext, inputs: list[torch.Tensor], key: Shapes, device: torch.device) -> None:
        plan = self.executor.plan
        with torch.inference_mode(False), torch.no_grad():
            if ctx.pool is None:
                ctx.pool = torch.cuda.graph_pool_handle()
            if ctx.arena is None and plan.arena is not None and plan.arena.size:
                ctx.arena = torch.empty(plan.arena.size, dtype=torch.uint8, device=device)
            # Static inputs are plain allocations outside the pool: they must outlive every replay.
            static = [_static_like(x, plan.tensors[name].layout) for x, name in zip(inputs, plan.inputs)]
            for s, x in zip(static, inputs):
                s.copy_(x)
            tune = plan.tune_new_shapes or key in self.tuned_shapes
            caller = torch.cuda.current_stream(device)
            with cudnn_autotune(tune):
                side = torch.cuda.Stream(device)
                side.wait_stream(caller)
                with torch.cuda.stream(side):
                    # Warm-up outside capture: cuDNN/cuBLAS algorithm search and lazy init must not be recorded.
                    self.executor.run(static, ctx.arena)
                caller.wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # thread_local: threads that do not go through Kiln may keep working while this one captures.
                with torch.cuda.graph(graph, pool=ctx.pool, stream=side, capture_error_mode="thread_local"):
                    outputs = self.executor.run(static, ctx.arena)
            ctx.graphs[key] = RecordedGraph(graph, static, outputs)
            self._records += 1
            while len(ctx.graphs) > self.max_graphs:
                ctx.graphs.popitem(last=False)


def _static_like(x: torch.Tensor, layout: str) -> torch.Tensor:
    fmt = torch.channels_last if layout == Layout.CHANNELS_LAST and x.dim() == 4 else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
