"""Kiln as a torch.compile backend: `torch.compile(model, backend="kiln", options={...})`.

Dynamo hands over one FX graph per captured region (graph breaks are its business) with the
module's parameters and buffers lifted to inputs. Each graph is wrapped in a module that
holds those as buffers and takes only the real inputs, then goes through Kiln's own
pipeline: capture (torch.export of that wrapper, so the same decompositions and weight
freezing as kiln.compile), lowering, partitioning, engine build. Freezing means weights
changed after compilation are not seen, as with kiln.compile.

Dynamo's dynamic dims (automatic dynamic after a recompile, mark_dynamic, dynamic=True)
become Kiln ranges: min and max from dynamo's symbol bounds, opt the size of the call
that compiled the graph. Dynamo bounds most dims only from below; the engine needs a
max (its memory is planned for it), so an unbounded dim gets GROW_FACTOR x its size,
and a later call past it rebuilds the engine for a larger range from the same capture.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

import kiln.api
from kiln.capture.dynamic import UNBOUNDED, describe_symbols
from kiln.capture.export import CapturedGraph, capture
from kiln.capture.input_spec import Input
from kiln.errors import KilnError
from kiln.report.partition_report import PartitionReport
from kiln.settings import CompileSettings

log = logging.getLogger("kiln.dynamo")

# A dim dynamo leaves unbounded above is built for this many times the size that compiled it.
GROW_FACTOR = 2

_NOT_OPTIONS = {"module", "inputs", "arg_inputs", "kwarg_inputs", "options"}


def option_names() -> list[str]:
    """What `options=` may hold: every kiln.compile setting, nothing about inputs (dynamo gives those)."""
    params = [p for p in inspect.signature(kiln.api.compile).parameters.values() if p.kind == p.KEYWORD_ONLY]
    names = {p.name for p in params} | {f.name for f in dataclasses.fields(CompileSettings)}
    return sorted(names - _NOT_OPTIONS)


def validate_options(options: dict | None) -> dict:
    options = dict(options or {})
    valid = option_names()
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KilnError(f"torch.compile(backend='kiln') got an unknown option {key!r}.{hint} Valid options: {', '.join(valid)}.")
    return options


@dataclass
class GraphRecord:
    """One graph dynamo handed to Kiln, and what became of it."""

    index: int
    compile_id: str  # dynamo's "frame/compile" id: a compile number above 0 is a recompile of that frame
    inputs: list[str]
    report: PartitionReport | None = None
    symbols: list[str] = field(default_factory=list)
    # Why this graph runs in eager PyTorch instead (Kiln could not take it), else None.
    fallback_reason: str | None = None
    compile_seconds: float = 0.0
    # Why it was built: "first compile", "recompile", or the call that outgrew the previous range.
    cause: str = "first compile"

    def summary(self) -> str:
        where = f"eager PyTorch ({self.fallback_reason})" if self.fallback_reason else (self.report.summary() if self.report else "")
        return f"graph {self.index} [{self.compile_id}, {self.cause}] inputs {', '.join(self.inputs) or '-'}: {where}"


class KilnBackend:
    """The `backend` torch.compile calls. `kiln_backend` is the one registered as "kiln"; make your own
    instance (`torch.compile(model, backend=KilnBackend(min_block_size=3))`) for records of one model."""

    def __init__(self, **options):
        self.options = validate_options(options)
        self.records: list[GraphRecord] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence, options: dict | None = None, mode: str | None = None):
        if mode not in (None, "default"):
            log.warning("kiln: torch.compile mode=%r is ignored; Kiln always builds an inference engine.", mode)
        merged = {**self.options, **validate_options(options)}
        compile_id = str(gm.meta.get("dynamo_compile_id", len(self.records)))
        record = GraphRecord(len(self.records), compile_id, [], cause="recompile" if _is_recompile(compile_id) else "first compile")
        self.records.append(record)
        start = time.perf_counter()
        # A bad setting is the user's to fix, not a reason to run in eager quietly.
        settings = kiln.api.make_settings(gm, list(example_inputs), {}, **{**_compile_defaults(), **merged})
        try:
            if torch.is_grad_enabled() and any(isinstance(v, torch.Tensor) and v.requires_grad for v in example_inputs):
                # An engine has no backward: running it here would cut the autograd graph.
                raise KilnError(
                    "autograd is on and this graph has inputs that require grad; Kiln builds inference engines. "
                    "Call the model under torch.no_grad() or torch.inference_mode() to run it on Kiln."
                )
            graph = _DynamoGraph(gm, example_inputs)
            record.inputs = [f"{s.name}: {s.describe()}" for s in graph.specs]
            # Outside dynamo's tracing context: torch.export would otherwise add its guards to dynamo's frame.
            with torch._guards.tracing(None):
                runner = graph.compile(settings, record, self.records)
            # dryrun: the report is recorded, the graph runs as dynamo traced it.
            result = gm.forward if runner.compiled is None else runner
        except Exception as exc:
            if merged.get("require_full_compilation"):
                raise
            record.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("kiln: graph %d (%s) runs in eager PyTorch: %s", record.index, compile_id, record.fallback_reason)
            result = gm.forward
        record.compile_seconds = time.perf_counter() - start
        log.info("kiln: %s", record.summary())
        return result

    def reset(self) -> None:
        """torch._dynamo.reset() calls this: the records describe graphs that no longer exist."""
        self.records.clear()


def _compile_defaults() -> dict:
    params = inspect.signature(kiln.api.compile).parameters.values()
    return {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY and p.name not in _NOT_OPTIONS}


def _is_recompile(compile_id: str) -> bool:
    # CompileId prints as "frame/compile" (sometimes with a trailing "_attempt"); compile > 0 is a recompile.
    parts = compile_id.split("/")
    return len(parts) == 2 and parts[1].split("_")[0].isdigit() and int(parts[1].split("_")[0]) > 0


class _DynamoGraph:
    """A dynamo graph split into what Kiln freezes (module weights), derives (sizes) and takes (tensors)."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: Sequence):
        self.gm = gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise KilnError(f"dynamo gave {len(example_inputs)} inputs for {len(placeholders)} placeholders")
        self.frozen: dict[int, torch.Tensor] = {}
        self.tensor_positions: list[int] = []
        sym_positions: list[int] = []
        for pos, (node, value) in enumerate(zip(placeholders, example_inputs)):
            if isinstance(value, torch.Tensor) and _is_module_state(node, value):
                self.frozen[pos] = value
            elif isinstance(value, torch.Tensor):
                self.tensor_positions.append(pos)
            elif isinstance(value, (torch.SymInt, int)):
                sym_positions.append(pos)
            else:
                raise KilnError(f"input {node.name} is a {type(value).__name__}; Kiln engines take tensors and sizes")
        self.example_tensors = [example_inputs[p] for p in self.tensor_positions]
        fakes = [placeholders[p].meta.get("example_value") for p in self.tensor_positions]
        names = [placeholders[p].name for p in self.tensor_positions]
        self.specs = [_input_spec(name, t, f) for name, t, f in zip(names, self.example_tensors, fakes)]
        # Each size input is read from a tensor dim that is exactly that symbol.
        self.size_sources: dict[int, tuple[int, int]] = {}
        for pos in sym_positions:
            value = placeholders[pos].meta.get("example_value", example_inputs[pos])
            self.size_sources[pos] = _find_dim(value, fakes, placeholders[pos].name)

    def wrapper(self) -> torch.nn.Module:
        return _FrozenInputs(self.gm, self.frozen, self.tensor_positions, self.size_sources)

    def compile(self, settings: CompileSettings, record: GraphRecord, records: list[GraphRecord]) -> _Runner:
        # One tuple argument, not *tensors: export binds varargs as one input, which dynamic_shapes must mirror.
        captured = capture(self.wrapper(), [tuple(self.specs)], {}, settings, allow_specialization=True)
        runner = _Runner(captured, self.tensor_positions, settings, records, record)
        runner.build(runner.specs, record)
        return runner


class _FrozenInputs(torch.nn.Module):
    """The dynamo graph with module weights as buffers and size inputs read off the tensors."""

    def __init__(self, gm, frozen: dict[int, torch.Tensor], tensor_positions: list[int], size_sources: dict[int, tuple[int, int]]):
        super().__init__()
        self.graph = gm
        self.tensor_positions = tensor_positions
        self.size_sources = size_sources
        self.frozen_positions = sorted(frozen)
        for pos in self.frozen_positions:
            self.register_buffer(f"frozen_{pos}", frozen[pos].detach())
        self.num_inputs = len(frozen) + len(tensor_positions) + len(size_sources)

    def forward(self, tensors: tuple[torch.Tensor, ...]):
        args: list = [None] * self.num_inputs
        for pos in self.frozen_positions:
            args[pos] = getattr(self, f"frozen_{pos}")
        for pos, t in zip(self.tensor_positions, tensors):
            args[pos] = t
        for pos, (i, d) in self.size_sources.items():
            args[pos] = tensors[i].shape[d]
        return self.graph(*args)


class _Runner:
    """What dynamo calls. It runs the engine, and rebuilds it when a call outgrows an open-ended range."""

    def __init__(
        self,
        captured: CapturedGraph,
        tensor_positions: list[int],
        settings: CompileSettings,
        records: list[GraphRecord],
        first: GraphRecord,
    ):
        self.captured = captured
        self.tensor_positions = tensor_positions
        self.settings = settings
        self.records = records
        self.first = first  # the record of the compile that made this runner; rebuilds are logged under its id
        self.specs = [_engine_range(s) for s in captured.input_specs]
        self.compiled = None
        # (input, dim, ceiling): dims dynamo left open above, which may grow up to the ceiling.
        self.growable = [
            (i, d, spec.max_shape[d])
            for i, spec in enumerate(captured.input_specs)
            for d in spec.dynamic_dims()
            if spec.max_shape[d] >= UNBOUNDED
        ]

    def build(self, specs: list[Input], record: GraphRecord) -> None:
        # Lowering rewrites the graph in place: a graph that may be rebuilt keeps its captured form.
        gm = copy.deepcopy(self.captured.graph_module) if self.growable else self.captured.graph_module
        result = kiln.api.compile_captured(dataclasses.replace(self.captured, graph_module=gm, input_specs=specs), self.settings)
        record.report = result if isinstance(result, PartitionReport) else result.report
        record.symbols = describe_symbols(specs)
        record.inputs = [f"{s.name}: {s.describe()}" for s in specs]
        self.compiled = None if isinstance(result, PartitionReport) else result
        self.specs = specs

    def __call__(self, *args):
        tensors = [args[p] for p in self.tensor_positions]
        for i, d, _ceiling in self.growable:
            if tensors[i].shape[d] > self.specs[i].max_shape[d]:
                self._grow(tensors)
                break
        return self.compiled(tuple(tensors))

    def _grow(self, tensors: list[torch.Tensor]) -> None:
        specs = [_copy(s) for s in self.specs]
        grown = []
        for i, d, ceiling in self.growable:
            size = tensors[i].shape[d]
            if size > specs[i].max_shape[d]:
                grown.append(f"{specs[i].name} dim {d} = {size} > {specs[i].max_shape[d]}")
                specs[i].max_shape = _with(specs[i].max_shape, d, min(ceiling, _round_up(GROW_FACTOR * size)))
        # Dims of one symbol take the widest max, or check_symbols would refuse the call.
        _align_shared_max(specs)
        record = GraphRecord(len(self.records), self.first.compile_id, [], cause="range grown: " + ", ".join(grown))
        self.records.append(record)
        log.info("kiln: rebuilding graph %d (%s) for a larger range: %s", self.first.index, self.first.compile_id, ", ".join(grown))
        start = time.perf_counter()
        self.build(specs, record)
        record.compile_seconds = time.perf_counter() - start


def _is_module_state(node: torch.fx.Node, value: torch.Tensor) -> bool:
    """A parameter or buffer of an nn.Module (frozen into the engine), not a tensor the caller passes."""
    grapharg = node.meta.get("grapharg")
    source = getattr(getattr(grapharg, "source", None), "guard_source", None)
    from_module = source is not None and "NN_MODULE" in getattr(source, "name", "")
    return from_module or isinstance(value, torch.nn.Parameter)


def _input_spec(name: str, tensor: torch.Tensor, fake) -> Input:
    """Static dims stay static; a symbolic dim gets dynamo's bounds (max unbounded when dynamo has none)."""
    lo, hi = list(tensor.shape), list(tensor.shape)
    if fake is not None:
        for d, dim in enumerate(fake.shape):
            if isinstance(dim, torch.SymInt):
                bounds = dim.node.shape_env.bound_sympy(dim.node.expr)
                lo[d] = min(_finite(bounds.lower, 0), tensor.shape[d])
                hi[d] = max(_finite(bounds.upper, UNBOUNDED), tensor.shape[d])
    return Input(min_shape=lo, opt_shape=tuple(tensor.shape), max_shape=hi, dtype=tensor.dtype, name=name)


def _engine_range(spec: Input) -> Input:
    """The range the engine is built for: unbounded maxes become GROW_FACTOR x the compiling size."""
    engine = _copy(spec)
    engine.max_shape = tuple(_round_up(GROW_FACTOR * opt) if hi >= UNBOUNDED else hi for opt, hi in zip(spec.opt_shape, spec.max_shape))
    return engine


def _align_shared_max(specs: list[Input]) -> None:
    widest: dict[str, int] = {}
    for spec in specs:
        for d, dim in enumerate(spec.symbolic_shape or ()):
            if isinstance(dim, str):
                widest[dim] = max(widest.get(dim, 0), spec.max_shape[d])
    for spec in specs:
        for d, dim in enumerate(spec.symbolic_shape or ()):
            if isinstance(dim, str) and dim in widest:
                spec.max_shape = _with(spec.max_shape, d, widest[dim])


def _find_dim(value, fakes: list, name: str) -> tuple[int, int]:
    expr = value.node.expr if isinstance(value, torch.SymInt) else None
    for i, fake in enumerate(fakes):
        for d, dim in enumerate(getattr(fake, "shape", ())):
            if expr is not None and isinstance(dim, torch.SymInt) and dim.node.expr == expr:
                return i, d
    raise KilnError(f"size input {name} is not a dimension of any tensor input, so Kiln cannot derive it at call time")


def _copy(spec: Input) -> Input:
    shapes = {"min_shape": spec.min_shape, "opt_shape": spec.opt_shape, "max_shape": spec.max_shape}
    new = Input(**shapes, dtype=spec.dtype, format=spec.format, name=spec.name)
    new.symbolic_shape = spec.symbolic_shape
    return new


def _with(shape, d: int, value: int) -> tuple[int, ...]:
    return tuple(value if k == d else s for k, s in enumerate(shape))


def _finite(bound, default: int) -> int:
    # sympy's infinities (torch's int_oo among them) refuse int().
    try:
        return int(bound)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return default


def _round_up(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


kiln_backend = KilnBackend()


def _register() -> None:
    """Make backend="kiln" work after `import kiln`, and through the package's entry point without it.

    Loading the entry point imports kiln, which would register the name before dynamo does and
    make dynamo's own registration fail as a duplicate: so leave the name to dynamo when it
    already knows the entry point.
    """
    from torch._dynamo.backends import registry

    known = getattr(registry, "_BACKENDS", {})
    if known.get("kiln") is None and "kiln" not in getattr(registry, "_COMPILER_FNS", {}):
        torch._dynamo.register_backend(kiln_backend, name="kiln")


_register()
