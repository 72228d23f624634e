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
weight but chose different tactics each get theirs; weights no step reads are dropped, but the
desc of each original stays in Plan.tensors, so a loaded plan can undo the preparation when it
must switch tactics on another device (builder/retarget.py).

Faults never end a build with a traceback from inside a kernel: a tactic that raises while
being prepared, timed or run for real (a Triton compile error, cuDNN finding no engine, a shape
it cannot take) is skipped with a KilnWarning and the layer takes the next-best tactic, the
reference at worst. A ValueError while preparing or timing is a tactic declining a layer it was
not written for, and is skipped silently. Running out of GPU memory is not skipped, since every other tactic would
need the same activations: it becomes one OutOfMemoryError that names the layer, after every
tensor the build made is freed.
"""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

import kiln.engine.kernels  # noqa: F401  (registers every tactic)
from kiln.engine.builder.candidates import candidates
from kiln.engine.builder.memory import plan_arena
from kiln.engine.builder.precompile import precompile
from kiln.engine.builder.timing import TimingCache, cudnn_autotune, time_on_gpu
from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.symbol_values import tuning_points
from kiln.engine.ir.symbolic import evaluate_shape
from kiln.engine.ir.tensor import Layout, TensorDesc
from kiln.engine.kernels.registry import REFERENCE, BuildTarget, RunContext, Tactic, get_tactic, tactics_for
from kiln.engine.optimize.precision import kept_fp32
from kiln.engine.plan import Plan, Step
from kiln.errors import KilnError, KilnWarning, OutOfMemoryError
from kiln.report.build_time import stage
from kiln.settings import CompileSettings

PROGRESS_EVERY = 25


# Ranks a layer's tactics without timing, best first: (layer, applicable tactics) -> (ranking, timings for the report).
Rank = Callable[[Layer, list[Tactic]], tuple[list[Tactic], dict[str, float]]]
# Milliseconds of one call of a function that runs a tactic.
Timer = Callable[[Callable[[], object]], float]


def build_plan(network: Network, settings: CompileSettings, rank: Rank | None = None, timer: Timer | None = None) -> Plan:
    """Choose a tactic per layer and lay out the plan.

    By `rank` if given, else by timing every applicable tactic with `timer` (on CUDA: time_on_gpu).
    Where layers can run (on CUDA, or with a timer), each is run for real at the tuning shapes
    and the first tactic in rank that works is kept. On the CPU without a timer the reference is
    the only trustworthy choice, and nothing runs."""
    target = BuildTarget(settings.device, settings.compute_dtype)
    progress = BuildProgress(f"moving the weights to {settings.device}")
    failure = None
    try:
        with on_device(settings.device):
            steps, weights = _choose_steps(network, settings, target, rank, timer, progress)
    except torch.cuda.OutOfMemoryError as exc:
        # Only text leaves this block: the exception's frames hold every tensor the build made.
        failure = str(exc).split("\n")[0]
    if failure is not None:
        free_build_memory()
        raise OutOfMemoryError(out_of_memory_message(progress.doing, settings.device, failure))
    with stage("planning"):
        return assemble_plan(network, settings, steps, weights)


def free_build_memory() -> None:
    """Give back what a failed build held: its tensors (cycles included), cached blocks, cuBLAS's per-stream workspaces."""
    gc.collect()
    # The timing streams each got a cuBLAS workspace from the caching allocator, kept until cleared.
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    torch.cuda.empty_cache()


def out_of_memory_message(doing: str, device: torch.device, detail: str) -> str:
    return (
        f"out of GPU memory on {device} while {doing} ({detail}). The builder runs every layer at the opt, min and max "
        "shape of each kiln.Input: compile with a smaller max_shape (or a lower batch size), free the memory other "
        "models and compiled modules hold on this GPU (each keeps up to max_cuda_graphs recorded CUDA graphs: pass a "
        "smaller max_cuda_graphs or cuda_graphs=False to them), or build on a GPU with more memory. Everything this "
        "build allocated has been freed."
    )


class BuildProgress:
    """What the build is doing now, in words, so an out-of-memory error can say where it happened."""

    def __init__(self, doing: str):
        self.doing = doing


@contextlib.contextmanager
def on_device(device: torch.device):
    """Make `device` the current CUDA device: timing streams, Triton launches and graphs all follow it."""
    if torch.device(device).type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


def _choose_steps(network: Network, settings: CompileSettings, target: BuildTarget, rank, timer, progress: BuildProgress):
    with stage("weights to device"):
        weights = PreparedWeights({name: value.to(settings.device) for name, value in network.constants.items()}, dict(network.tensors))
        if target.is_cuda:
            torch.cuda.synchronize(settings.device)  # the copies are asynchronous: their time is this stage's
    started = time.perf_counter()
    steps = []
    if target.is_cuda or timer is not None:
        cache = TimingCache(settings.timing_cache_path)
        tuners = []
        points = tuning_points(network.symbols)
        with stage("candidates"):
            offered = [candidates(network, layer, target, points) for layer in network.layers]
            # A layer whose every candidate the cache has timed at every point is decided before anything is built:
            # only its choice is compiled and prepared, nothing of it is timed.
            keys = [TimingCache.layer_key(network, layer, c, points) if len(c) > 1 else None for layer, c in zip(network.layers, offered)]
            known = [cache.get_layer(k) if k is not None else None for k in keys]
        for point in points:
            progress.doing = f"making random inputs at shape {dict(point) or 'static'}"
            tuners.append(LayerTuner(network, weights, settings, point, cache, progress, timer or time_on_gpu))
        if rank is None:
            progress.doing = "compiling the Triton kernels of every candidate"
            with stage("precompile"):
                compile_kernels(network, weights, points, target, settings.debug, kernels_to_compile(offered, known))
        # "running layers": the chosen tactics run at every point and weights prepared (first loads of kernels too)
        with cudnn_autotune(), torch.no_grad(), stage("running layers"):
            for i, layer in enumerate(tqdm(network.layers, desc="kiln: timing tactics", unit="layer", disable=None, leave=False)):
                if rank is None:
                    per_point = known[i]
                    if per_point is None and keys[i] is not None:
                        with stage("timing"):
                            per_point, faulted = time_candidates(tuners, layer, offered[i])
                        if not faulted:  # a fault may be passing: not written into the cache for good
                            cache.put_layer(keys[i], per_point)
                    tactic, timings = choose_tactic(tuners, i, layer, offered[i], per_point)
                else:  # a plan being retargeted keeps its saved tactic wherever it applies, pruned from timing or not
                    ranked, timings = rank(layer, tactics_for(layer, target))
                    tactic = run_first_that_works(tuners, i, layer, ranked)
                progress.doing = f"preparing the weights of layer {layer.name} ({layer.kind}) for tactic {tactic.name!r}"
                steps.append(Step(weights.apply(layer, tactic), tactic.name, timings))
                if settings.debug and (i + 1) % PROGRESS_EVERY == 0:
                    print(f"kiln build: {i + 1}/{len(network.layers)} layers, {time.perf_counter() - started:.1f} s", flush=True)
        cache.save()
        if settings.debug:
            print(
                f"kiln build: {len(steps)} layers at {len(tuners)} shape(s) in {time.perf_counter() - started:.1f} s; "
                f"{sum(t.timed for t in tuners)} tactic timings measured, {cache.hits} from the timing cache, "
                f"{cache.layer_hits} layers decided by it",
                flush=True,
            )
    else:
        for layer in network.layers:
            ranked, timings = (rank or rank_reference)(layer, tactics_for(layer, target))  # the CPU: nothing runs
            progress.doing = f"preparing the weights of layer {layer.name} ({layer.kind}) for tactic {ranked[0].name!r}"
            steps.append(Step(weights.apply(layer, ranked[0]), ranked[0].name, timings))
    return steps, weights


def compile_kernels(
    network: Network, weights: PreparedWeights, points: list[dict[str, int]], target: BuildTarget, debug: bool, offered: list[list[Tactic]]
) -> None:
    """Compile the Triton kernels of `offered` (per layer) before timing, in parallel; with a progress bar on a terminal."""
    started = time.perf_counter()
    with tqdm(desc="kiln: compiling kernels", unit="kernel", disable=None, leave=False) as bar:
        for point in points:
            make_input = lambda desc, run: random_tensor(desc, run, target.device)  # noqa: E731
            ran, failed = precompile(network, weights, point, target, make_input, bar, offered)
            if debug:
                print(f"kiln build: {ran} Triton candidates compiled ahead at {point or 'static'} in {time.perf_counter() - started:.1f} s")
                for layer, tactic, exc in failed:
                    print(f"kiln build:   {tactic} on {layer} raised {type(exc).__name__}: {str(exc)[:200]}")


def kernels_to_compile(offered: list[list[Tactic]], known: list[list[dict[str, float]] | None]) -> list[list[Tactic]]:
    """Per layer, the candidates to compile ahead: all of them, or only the first in rank where the cache decided."""
    return [c if timings is None else rank_by_timings(c, timings)[:1] for c, timings in zip(offered, known)]


def time_candidates(tuners: list[LayerTuner], layer: Layer, offered: list[Tactic]) -> tuple[list[dict[str, float]], bool]:
    """Each candidate's milliseconds at every tuning point, and whether a candidate faulted (raised other than a decline)."""
    faults = sum(tuner.faults for tuner in tuners)
    per_point = [tuner.time_all(layer, offered) for tuner in tuners]
    return per_point, sum(tuner.faults for tuner in tuners) != faults


def rank_reference(layer: Layer, candidates: list[Tactic]) -> tuple[list[Tactic], dict[str, float]]:
    """Without a GPU to time on, the reference is the only trustworthy choice."""
    return [next((t for t in candidates if t.name == REFERENCE), candidates[0])], {}


def assemble_plan(network: Network, settings: CompileSettings, steps: list[Step], weights: PreparedWeights) -> Plan:
    used = {n for s in steps for n in s.layer.inputs if n is not None}
    kept = used | originals_of_prepared(steps)
    plan_tensors = {n: d for n, d in weights.tensors.items() if d.role != "constant" or n in kept}
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
        kernels_unfused=network.kernels_unfused,
        kernels=network.kernels,
    )


def prepared_name(weight: str, tactic: str) -> str:
    return f"{weight}__{tactic}"


def original_name(name: str, tactic: str) -> str | None:
    """The weight `name` was prepared from for `tactic`, or None if it is not a prepared weight."""
    suffix = prepared_name("", tactic)
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


def originals_of_prepared(steps: list[Step]) -> set[str]:
    """Weights the steps read only through a tactic's prepared copy: their descs stay in the plan."""
    found = set()
    for step in steps:
        for n in step.layer.inputs:
            original = original_name(n, step.tactic) if n is not None else None
            if original is not None:
                found.add(original)
    return found


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

    def inputs_for(self, layer: Layer, tactic: Tactic, activation: Callable[[str], torch.Tensor]) -> list:
        """The layer's inputs for `tactic`: its prepared weights, the other weights, and `activation(name)` for the rest."""
        prepared = self.for_tactic(layer, tactic)
        out = []
        for n in layer.inputs:
            if n is None:
                out.append(None)
            elif n in prepared:
                out.append(prepared[n])
            elif n in self.values:
                out.append(self.values[n])
            else:
                out.append(activation(n))
        return out

    def apply(self, layer: Layer, tactic: Tactic) -> Layer:
        """A copy of `layer` that reads the weights prepared for `tactic`."""
        changed = self.for_tactic(layer, tactic)
        if not changed:
            return layer
        inputs = []
        for n in layer.inputs:
            if n in changed:
                name = prepared_name(n, tactic.name)
                if name not in self.values:
                    value = changed[n]
                    self.values[name] = value
                    nhwc = value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last) and not value.is_contiguous()
                    layout = Layout.CHANNELS_LAST if nhwc else Layout.CONTIGUOUS
                    self.tensors[name] = TensorDesc(name, list(value.shape), value.dtype, layout, role="constant")
                n = name
            inputs.append(n)
        return Layer(layer.kind, layer.name, inputs, list(layer.outputs), layer.attrs, layer.precision, layer.source)


def choose_tactic(
    tuners: list[LayerTuner], index: int, layer: Layer, candidates: list[Tactic], per_point: list[dict[str, float]] | None = None
) -> tuple[Tactic, dict[str, float]]:
    """The tactic with the smallest worst-case slowdown against each point's fastest; ties go to the faster at opt.

    `per_point`: the candidates' timings at each tuning point, if known (from the timing cache); else each tuner
    times them. The chosen tactic then runs for real at every point, so the next layer is timed on its output;
    if it raises there, or gives an output of the wrong shape, the next in rank takes its place."""
    timings: dict[str, float] = {}
    ranked = list(candidates)
    if len(candidates) > 1:
        if per_point is None:
            per_point = [tuner.time_all(layer, candidates) for tuner in tuners]
        timings = per_point[0]
        ranked = rank_by_timings(candidates, per_point)
    return run_first_that_works(tuners, index, layer, ranked), timings


def rank_by_timings(candidates: list[Tactic], per_point: list[dict[str, float]]) -> list[Tactic]:
    """The candidates timed at every point, by worst slowdown against each point's fastest, then by time at opt."""
    usable = [t for t in candidates if all(t.name in point for point in per_point)]

    def worst_slowdown(tactic: Tactic) -> tuple[float, float]:
        ratio = max(point[tactic.name] / max(min(point.values()), 1e-9) for point in per_point)
        return round(ratio, 3), per_point[0][tactic.name]

    return sorted(usable, key=worst_slowdown)


def run_first_that_works(tuners: list[LayerTuner], index: int, layer: Layer, ranked: list[Tactic]) -> Tactic:
    """Run the tactics in rank at every point until one works, and keep its outputs; the reference comes last."""
    ranked = list(ranked)
    if not any(t.name == REFERENCE for t in ranked):
        ranked.append(get_tactic(layer.kind, REFERENCE))
    for tactic in ranked:
        try:
            # Every point first, and only then keep the outputs: a tactic failing at the max shape
            # must not leave the opt point's values half advanced.
            outputs = [tuner.run(layer, tactic) for tuner in tuners]
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            if tactic.name == REFERENCE or tactic is ranked[-1]:
                raise
            skip_tactic(layer, tactic, "failed when run for real", exc)
            check_device_alive(layer, tactic, exc)
            continue
        for tuner, values in zip(tuners, outputs):
            tuner.keep(index, layer, values)
        return tactic
    raise KilnError(f"layer {layer.name} ({layer.kind}) has no tactic that applies")  # unreachable: the reference is last


def skip_tactic(layer: Layer, tactic: Tactic, what: str, exc: BaseException) -> None:
    lines = str(exc).strip().splitlines() or [""]
    detail = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300 else "")
    warnings.warn(
        f"kiln build: layer {layer.name} ({layer.kind}): tactic {tactic.name!r} {what} and is skipped "
        f"({type(exc).__name__}: {detail}); the layer uses another tactic. Compile with debug=True to see every candidate.",
        KilnWarning,
        stacklevel=2,
    )


def check_device_alive(layer: Layer, tactic: Tactic, exc: BaseException) -> None:
    """After a tactic failed on CUDA, make sure it did not leave the GPU unusable (an illegal memory access is sticky)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    try:
        torch.cuda.synchronize()
    except RuntimeError as broken:
        raise KilnError(
            f"tactic {tactic.name!r} of layer {layer.name} ({layer.kind}) failed ({type(exc).__name__}: {str(exc)[:200]}) and "
            f"left the GPU unusable ({str(broken)[:200]}); this is a bug in that kernel. Restart the process, and compile "
            "with the op that made this layer in torch_executed_ops until it is fixed."
        ) from None


class LayerTuner:
    """Runs the network at one set of symbol values, timing every candidate tactic of each layer on its real inputs."""

    def __init__(
        self,
        network: Network,
        weights: PreparedWeights,
        settings: CompileSettings,
        point: dict[str, int],
        cache: TimingCache,
        progress: BuildProgress | None = None,
        timer: Timer = time_on_gpu,
    ):
        self.network = network
        self.weights = weights
        self.run_context = RunContext(point)
        self.cache = cache
        self.timed = 0
        self.faults = 0  # candidates that raised something other than ValueError (a decline) while timed
        self.debug = settings.debug
        self.progress = progress or BuildProgress("")
        self.timer = timer
        self.values: dict[str, torch.Tensor] = {}
        for name in network.inputs:
            self.values[name] = random_tensor(network.tensors[name], self.run_context, settings.device)
        self.last_use: dict[str, int] = {}
        for i, layer in enumerate(network.layers):
            for n in layer.inputs:
                if n is not None:
                    self.last_use[n] = i

    def _inputs(self, layer: Layer, tactic: Tactic) -> list:
        return self.weights.inputs_for(layer, tactic, self.values.__getitem__)

    def _where(self, layer: Layer, tactic: Tactic, doing: str) -> str:
        shape = f" at shape {dict(self.run_context.symbols)}" if self.run_context.symbols else ""
        return f"{doing} tactic {tactic.name!r} of layer {layer.name} ({layer.kind}){shape}"

    def time_all(self, layer: Layer, candidates: list[Tactic]) -> dict[str, float]:
        """Milliseconds of each candidate that can take this layer here; one that raises is skipped with a warning."""
        timings: dict[str, float] = {}
        for tactic in candidates:
            try:
                self.progress.doing = self._where(layer, tactic, "preparing the weights for")
                inputs = self._inputs(layer, tactic)
                key = TimingCache.key(layer.kind, tactic.name, layer.attrs, inputs)
                ms = self.cache.get(key)
                if ms is None:
                    self.progress.doing = self._where(layer, tactic, "timing")
                    ms = self.timer(lambda t=tactic, x=inputs: t.fn(layer, x, self.run_context))
                    self.timed += 1
                    self.cache.put(key, ms)
            except torch.cuda.OutOfMemoryError:
                raise  # every other tactic needs the same activations: build_plan makes it one clear error
            except Exception as exc:
                if tactic.name == REFERENCE:
                    raise
                if self.debug:
                    print(f"kiln build: tactic {tactic.name} does not take {layer.name}: {exc}")
                # A ValueError is how a tactic or its prepare declines a layer it was not written for (an FP32
                # input to an FP16 kernel, a weight of another shape): expected, so silent. Anything else is a fault.
                if not isinstance(exc, ValueError):
                    self.faults += 1
                    skip_tactic(layer, tactic, "failed to prepare or compile, or raised while being timed", exc)
                check_device_alive(layer, tactic, exc)
                continue
            timings[tactic.name] = round(ms, 5)
        return timings

    def run(self, layer: Layer, tactic: Tactic) -> list[torch.Tensor]:
        """The layer's outputs computed by `tactic` on this point's real inputs; ValueError if their shapes are wrong."""
        self.progress.doing = self._where(layer, tactic, "running")
        result = tactic.fn(layer, self._inputs(layer, tactic), self.run_context)
        results = [result] if isinstance(result, torch.Tensor) else list(result)
        if tactic.name != REFERENCE:
            # The reference defines what the layer computes; a fast tactic giving another shape would be a wrong answer.
            expected = [self.run_context.shape(self.network.tensors[n].shape) for n in layer.outputs]
            got = [list(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__ for r in results]
            if got != expected:
                raise ValueError(f"its outputs have shapes {got}, the network expects {expected}")
        return results

    def keep(self, index: int, layer: Layer, results: list[torch.Tensor]) -> None:
        """Store the layer's outputs so the next layer is timed on them; drop inputs no later layer reads."""
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

