"""Timing tactics on the GPU, and the on-disk timing cache.

A candidate is timed the way the runtime will run it: REPS calls recorded into one CUDA
graph, the graph replayed ROUNDS times between CUDA events, the median taken. That measures
GPU time alone; eager timing of a small layer would measure Python and launch overhead,
which CUDA-graph replay removes. A tactic that cannot be captured (it syncs with the host) is
timed eagerly instead, and then pays for its overhead, as it would at run time.

The cache maps (GPU, torch version, layer kind, tactic, attrs, input shapes/dtypes/strides)
to milliseconds, so a rebuild of the same model skips all timing. It also keeps, per layer
signature (kind, attrs, precision, input and output descs at each tuning point, the candidate
names), every candidate's timings at every point: with that entry the builder knows its choice
before building anything, so a warm rebuild compiles only the chosen kernel of each layer and
prepares no losing candidate's weights (builder/build.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from collections.abc import Callable

import torch

from kiln.engine.ir.symbolic import evaluate_shape

REPS = 5
ROUNDS = 9


@contextlib.contextmanager
def cudnn_autotune(enabled: bool = True):
    """With `enabled`, cuDNN times its algorithms per shape on the first call, else takes its heuristic's pick.

    Set either way, whatever the caller's global flag: the runtime records graphs under the
    same choice the builder timed with."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def time_on_gpu(fn: Callable[[], object]) -> float:
    """Median milliseconds of one call of `fn`, which launches work on the current CUDA stream."""
    fn()  # first call: cuDNN/cuBLAS algorithm search, lazy module loads
    torch.cuda.synchronize()
    try:
        return time_in_graph(fn)
    except torch.cuda.OutOfMemoryError:
        raise  # out of memory eagerly too: the builder turns it into one clear error
    except RuntimeError:
        torch.cuda.synchronize()
        return _time_eager(fn)


def time_in_graph(fn) -> float:
    """Median milliseconds of one call of `fn` replayed from a CUDA graph (REPS calls, ROUNDS replays); raises if it cannot be captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    graph.replay()
    times = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / REPS)
    del graph
    return statistics.median(times)


def _time_eager(fn) -> float:
    times = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(REPS):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / REPS)
    return statistics.median(times)


class TimingCache:
    """JSON file of measured tactic times; None path keeps it in memory for this build only."""

    def __init__(self, path: str | None):
        self.path = path
        self.entries: dict[str, float] = {}
        # layer signature -> per tuning point, tactic name -> ms (what choose_tactic ranks)
        self.layers: dict[str, list[dict[str, float]]] = {}
        self.hits = 0
        self.layer_hits = 0
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
                self.entries = {str(k): float(v) for k, v in data.get("entries", {}).items()}
                self.layers = {
                    str(k): [{str(t): float(ms) for t, ms in point.items()} for point in v] for k, v in data.get("layers", {}).items()
                }
            except (OSError, ValueError, AttributeError, TypeError):
                # A damaged cache only costs re-timing; never fail a build on it.
                self.entries, self.layers = {}, {}

    @staticmethod
    def key(kind: str, tactic: str, attrs: dict, inputs: list) -> str:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        described = [None if t is None else [list(t.shape), str(t.dtype), list(t.stride())] for t in inputs]
        return json.dumps([device, torch.__version__, kind, tactic, attrs, described], sort_keys=True, default=str)

    def get(self, key: str) -> float | None:
        value = self.entries.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: str, ms: float) -> None:
        self.entries[key] = ms

    @staticmethod
    def layer_key(network, layer, candidates: list, points: list[dict[str, int]]) -> str:
        """A layer's signature: kind, attrs, precision, each input and output at every tuning point (shape, dtype,
        layout, constant or not) and the names of the candidates offered, so a new or withdrawn tactic re-times it."""
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"

        def described(name):
            desc = network.tensors.get(name) if name is not None else None
            if desc is None:
                return None
            return [[evaluate_shape(desc.shape, p) for p in points], str(desc.dtype), str(desc.layout), desc.role == "constant"]

        tensors = [[described(n) for n in layer.inputs], [described(n) for n in layer.outputs]]
        names = [t.name for t in candidates]
        signature = [device, torch.__version__, layer.kind, layer.attrs, str(layer.precision), tensors, names]
        return json.dumps(signature, sort_keys=True, default=str)

    def get_layer(self, key: str) -> list[dict[str, float]] | None:
        value = self.layers.get(key)
        if value is not None:
            self.layer_hits += 1
        return value

    def put_layer(self, key: str, per_point: list[dict[str, float]]) -> None:
        self.layers[key] = [dict(point) for point in per_point]

    def save(self) -> None:
        if not self.path:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"format": 1, "entries": self.entries, "layers": self.layers}, f)
        os.replace(tmp, self.path)
