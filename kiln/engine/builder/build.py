"""The builder: Network → Plan. Picks a tactic per layer, prepares weights for it, plans memory.

On CUDA every applicable tactic of a layer is timed on real activations (the network is run
layer by layer on random inputs) and the fastest kept; every candidate's time at the opt shape
goes into Step.timings for the report. A ranged engine is also run at the min and max shapes,
and keeps the tactic whose worst slowdown against the best one at any of the three is the
smallest: the winner at opt can be far off at the ends of the range (an attention backend that
is best at sequence 128 and 15% slower at 16), and one engine must serve the whole range.
Without a GPU the reference tactic is the only trustworthy choice, and nothing is timed.

A tactic's `prepare` turns a weight into what it wants (NHWC, transposed...) once, here. A
prepared weight is stored under its own name, "<weight>__<tactic>", so two layers that share a
weight but chose different tactics each get theirs; weights no step reads are dropped.
"""

from __future__ import annotations

import time

import torch

import kiln.engine.kernels  # noqa: F401  (registers every tactic)
from kiln.engine.builder.memory import plan_arena
from kiln.engine.builder.timing import TimingCache, cudnn_autotune, time_on_gpu
from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.symbol_values import tuning_points
from kiln.engine.ir.symbolic import evaluate_shape
from kiln.engine.ir.tensor import Layout, TensorDesc
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, RunContext, Tactic, tactics_for
from kiln.engine.optimize.precision import kept_fp32
from kiln.engine.plan import Plan, Step
from kiln.settings import CompileSettings

PROGRESS_EVERY = 25


def build_plan(network: Network, settings: CompileSettings) -> Plan:
    target = BuildTarget(settings.device, settings.compute_dtype)
    tensors = dict(network.tensors)
    weights = PreparedWeights({name: value.to(settings.device) for name, value in network.constants.items()}, tensors)
    started = time.perf_counter()
    steps = []
    if target.is_cuda:
        cache = TimingCache(settings.timing_cache_path)
        tuners = [LayerTuner(network, weights, settings, point, cache) for point in tuning_points(network.symbols)]
        with cudnn_autotune(), torch.no_grad():
            for i, layer in enumerate(network.layers):
                tactic, timings = choose_tactic(tuners, i, layer, tactics_for(layer, target))
                steps.append(Step(weights.apply(layer, tactic), tactic.name, timings))
                if settings.debug and (i + 1) % PROGRESS_EVERY == 0:
                    print(f"kiln build: {i + 1}/{len(network.layers)} layers, {time.perf_counter() - started:.1f} s", flush=True)
        cache.save()
        if settings.debug:
            print(
                f"kiln build: {len(steps)} layers at {len(tuners)} shape(s) in {time.perf_counter() - started:.1f} s; "
                f"{sum(t.timed for t in tuners)} tactic timings measured, {cache.hits} from the timing cache",
                flush=True,
            )
    else:
        for layer in network.layers:
            candidates = tactics_for(layer, target)
            chosen = next((t for t in candidates if t.name == REFERENCE), candidates[0])
            steps.append(Step(weights.apply(layer, chosen), chosen.name))
    used = {n for s in steps for n in s.layer.inputs if n is not None}
    plan_tensors = {n: d for n, d in tensors.items() if d.role != "constant" or n in used}
    return Plan(
        inputs=list(network.inputs),
        outputs=list(network.outputs),
        tensors=plan_tensors,
        steps=steps,
        weights={n: w for n, w in weights.values.items() if n in used},
        symbols=dict(network.symbols),
        device=str(settings.device),
        compute_dtype=settings.compute_dtype,
        kept_fp32=kept_fp32(network.layers),
        arena=plan_arena([s.layer for s in steps], plan_tensors, list(network.outputs), network.symbols),
        cuda_graphs=settings.cuda_graphs,
        max_cuda_graphs=settings.max_cuda_graphs,
        tune_new_shapes=settings.tune_new_shapes,
        max_execution_contexts=settings.max_execution_contexts,
    )


class PreparedWeights:
    """The network's weights on the device, plus each tactic's prepared copies."""

    def __init__(self, values: dict[str, torch.Tensor], tensors: dict[str, TensorDesc]):
        self.values = values
        self.tensors = tensors
        self._prepared: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def for_tactic(self, layer: Layer, tactic: Tactic) -> dict[str, torch.Tensor]:
        """Original weight name -> the tensor this tactic wants in its place (only the ones it changes)."""
        if tactic.prepare is None:
            return {}
        own = {n: self.values[n] for n in layer.inputs if n is not None and n in self.values}
        key = (",".join(sorted(own)), tactic.name)
        if key not in self._prepared:
            self._prepared[key] = dict(tactic.prepare(layer, own)) if own else {}
        return self._prepared[key]

    def apply(self, layer: Layer, tactic: Tactic) -> Layer:
        """A copy of `layer` that reads the weights prepared for `tactic`."""
        changed = self.for_tactic(layer, tactic)
        if not changed:
            return layer
        inputs = []
        for n in layer.inputs:
            if n in changed:
                name = f"{n}__{tactic.name}"
                if name not in self.values:
                    value = changed[n]
                    self.values[name] = value
                    nhwc = value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last) and not value.is_contiguous()
                    layout = Layout.CHANNELS_LAST if nhwc else Layout.CONTIGUOUS
                    self.tensors[name] = TensorDesc(name, list(value.shape), value.dtype, layout, role="constant")
                n = name
            inputs.append(n)
        return Layer(layer.kind, layer.name, inputs, list(layer.outputs), layer.attrs, layer.precision, layer.source)


def choose_tactic(tuners: list[LayerTuner], index: int, layer: Layer, candidates: list[Tactic]) -> tuple[Tactic, dict[str, float]]:
    """The tactic with the smallest worst-case slowdown against each point's fastest; ties go to the faster at opt."""
    timings: dict[str, float] = {}
    chosen = candidates[0]
    if len(candidates) > 1:
        per_point = [tuner.time_all(layer, candidates) for tuner in tuners]
        timings = per_point[0]
        usable = [t for t in candidates if all(t.name in point for point in per_point)]

        def worst_slowdown(tactic: Tactic) -> tuple[float, float]:
            ratio = max(point[tactic.name] / max(min(point.values()), 1e-9) for point in per_point)
            return round(ratio, 3), timings[tactic.name]

        chosen = min(usable, key=worst_slowdown)
    for tuner in tuners:
        tuner.advance(index, layer, chosen)
    return chosen, timings


class LayerTuner:
    """Runs the network at one set of symbol values, timing every candidate tactic of each layer on its real inputs."""

    def __init__(self, network: Network, weights: PreparedWeights, settings: CompileSettings, point: dict[str, int], cache: TimingCache):
        self.network = network
        self.weights = weights
        self.run = RunContext(point)
        self.cache = cache
        self.timed = 0
        self.debug = settings.debug
        self.values: dict[str, torch.Tensor] = {}
        for name in network.inputs:
            self.values[name] = random_tensor(network.tensors[name], self.run, settings.device)
        self.last_use: dict[str, int] = {}
        for i, layer in enumerate(network.layers):
            for n in layer.inputs:
                if n is not None:
                    self.last_use[n] = i

    def _inputs(self, layer: Layer, tactic: Tactic) -> list:
        prepared = self.weights.for_tactic(layer, tactic) if tactic.prepare is not None else {}
        out = []
        for n in layer.inputs:
            if n is None:
                out.append(None)
            elif n in prepared:
                out.append(prepared[n])
            elif n in self.values:
                out.append(self.values[n])
            else:
                out.append(self.weights.values[n])
        return out

    def time_all(self, layer: Layer, candidates: list[Tactic]) -> dict[str, float]:
        """Milliseconds of each candidate that can take this layer here."""
        timings: dict[str, float] = {}
        for tactic in candidates:
            try:
                inputs = self._inputs(layer, tactic)
                key = TimingCache.key(layer.kind, tactic.name, layer.attrs, inputs)
                ms = self.cache.get(key)
                if ms is None:
                    ms = time_on_gpu(lambda t=tactic, x=inputs: t.fn(layer, x, self.run))
                    self.timed += 1
                    self.cache.put(key, ms)
            except Exception as exc:  # a fast tactic that cannot take this layer is skipped, not fatal
                if tactic.name == REFERENCE:
                    raise
                if self.debug:
                    print(f"kiln build: tactic {tactic.name} does not take {layer.name}: {exc}")
                continue
            timings[tactic.name] = round(ms, 5)
        return timings

    def advance(self, index: int, layer: Layer, chosen: Tactic) -> None:
        """Run the chosen tactic so the next layer is timed on this one's real output."""
        result = chosen.fn(layer, self._inputs(layer, chosen), self.run)
        results = [result] if isinstance(result, torch.Tensor) else list(result)
        for name, value in zip(layer.outputs, results):
            # Downstream layers are timed on the layout the layout pass planned, whichever tactic ran here,
            # so one tactic's NCHW output cannot make every later NHWC candidate pay a transpose.
            self.values[name] = in_planned_layout(value, self.network.tensors[name])
        for n in layer.inputs:
            if n is not None and self.last_use.get(n) == index:
                self.values.pop(n, None)


def in_planned_layout(value: torch.Tensor, desc: TensorDesc) -> torch.Tensor:
    if desc.layout == Layout.CHANNELS_LAST and value.dim() == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value


def random_tensor(desc: TensorDesc, run: RunContext, device: torch.device) -> torch.Tensor:
    """Build-time stand-in for a network input: random values (never zeros, which time faster), valid as indices."""
    shape = evaluate_shape(desc.shape, run.symbols)
    if desc.dtype.is_floating_point:
        value = torch.randn(shape, device=device).to(desc.dtype)
    elif desc.dtype == torch.bool:
        value = torch.rand(shape, device=device) > 0.5
    else:
        value = torch.randint(0, 2, shape, device=device, dtype=desc.dtype)
    if desc.layout == Layout.CHANNELS_LAST and value.dim() == 4:
        value = value.contiguous(memory_format=torch.channels_last)
    return value

