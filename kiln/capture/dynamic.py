"""Dynamic dims: from kiln.Input ranges to torch.export, and from the exported graph back to named symbols.

torch.export is asked for `Dim.AUTO(min, max)` on every ranged dimension rather than one
named `Dim` per dimension: with named Dims, two dims the model needs equal (ids and mask
sequence length) raise a constraint violation, while AUTO lets export discover equalities
and relations and give such dims one symbol. What export decided is then read back from
the placeholders' fake shapes (`Input.symbolic_shape`), checked against what the user
asked for, and used for the engine's SymbolRanges and the call-time checks.

Sizes 0 and 1: export specialises a dimension whose example is 0 or 1, and for an AUTO
dimension it assumes sizes >= 2 (torch 2.11 and 2.13 alike). So the capture example and
the export range start at 2; when the user's range reaches below 2, the captured graph is
run once at the minimum and compared with the model itself before that size is allowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree
from torch.export import Dim

from kiln.capture.input_spec import Input
from kiln.engine.ir.symbolic import evaluate, evaluate_shape, is_static, shape_of, symbols_in
from kiln.errors import CaptureError, InputMismatchError, SmallSizeError

# The smallest size torch.export traces a dynamic dimension at without specialising it.
EXPORT_MIN = 2
# A max_shape this large means "no upper bound" to torch.export (torch.compile's dims may have none).
UNBOUNDED = torch.iinfo(torch.int64).max
# How closely the captured graph must agree with the model at a size below EXPORT_MIN.
SMALL_SIZE_RTOL = 1e-3


@dataclass
class SymbolInfo:
    """One symbol of the captured graph: its range over all the dims that carry it."""

    name: str
    min: int
    opt: int
    max: int
    # (flat input index, dim) of every input dimension that is exactly this symbol.
    sources: list[tuple[int, int]] = field(default_factory=list)


def capture_shape(spec: Input) -> tuple[int, ...]:
    """The example shape torch.export traces at: the opt shape, with ranged dims lifted to EXPORT_MIN."""
    return tuple(
        max(opt, min(EXPORT_MIN, hi)) if lo != hi else opt for lo, opt, hi in zip(spec.min_shape, spec.opt_shape, spec.max_shape)
    )


def capture_example(spec: Input, device: torch.device | str) -> torch.Tensor:
    shape = capture_shape(spec)
    return Input(shape, dtype=spec.dtype, format=spec.format).example(device)


def dynamic_shapes_for(specs: list[Input], flat_spec: pytree.TreeSpec, varargs: int | None = None):
    """None when every input is static, else (args, kwargs) of {dim: Dim.AUTO(min, max)} per input.

    `varargs` is the index of forward's *args parameter: export binds the arguments from there on
    as one tuple, and dynamic_shapes must have the same structure.
    """
    if not any(s.is_dynamic for s in specs):
        return None
    per_input = []
    for spec in specs:
        dims = {d: Dim.AUTO(min=max(spec.min_shape[d], EXPORT_MIN), max=_export_max(spec.max_shape[d])) for d in spec.dynamic_dims()}
        per_input.append(dims or None)
    args, kwargs = pytree.tree_unflatten(per_input, flat_spec)
    args = tuple(args)
    if varargs is not None:
        args = args[:varargs] + (args[varargs:],)
    return (args, kwargs) if kwargs else args


def varargs_at(module: torch.nn.Module) -> int | None:
    """Position of forward's *args parameter, if it has one."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    return next((i for i, p in enumerate(params) if p.kind == p.VAR_POSITIONAL), None)


def read_symbolic_shapes(gm: torch.fx.GraphModule, specs: list[Input], *, allow_specialization: bool = False) -> None:
    """Record on each spec the shape export gave its placeholder (ints and symbol expressions).

    A dim the user gave a range but the model's code fixed to one size is an error, unless
    `allow_specialization` (torch.compile's dynamic dims are guesses, so there the range shrinks
    to that size instead).
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, (spec, node) in enumerate(zip(specs, placeholders)):
        dims = shape_of(node.meta["val"].shape)
        for d in spec.dynamic_dims():
            if not isinstance(dims[d], int):
                continue
            if not allow_specialization:
                raise CaptureError(
                    f"{_label(spec, i)} dimension {d} was given the range {spec.min_shape[d]}..{spec.max_shape[d]}, but the "
                    f"model's code only works with size {dims[d]} there (a view/reshape with a literal size, a weight "
                    f"shape, or a check that fixes it). What to do: give dimension {d} the static size {dims[d]}, or "
                    "change the model so that dimension can vary (e.g. use -1 or x.shape[...] in view/reshape)."
                )
            spec.min_shape = _replace(spec.min_shape, d, dims[d])
            spec.opt_shape = _replace(spec.opt_shape, d, dims[d])
            spec.max_shape = _replace(spec.max_shape, d, dims[d])
        spec.symbolic_shape = None if is_static(dims) else dims


def symbol_table(specs: Sequence[Input]) -> dict[str, SymbolInfo]:
    """Every symbol that is a whole input dimension, with the intersection of those dims' ranges."""
    table: dict[str, SymbolInfo] = {}
    for i, spec in enumerate(specs):
        for d, dim in enumerate(spec.symbolic_shape or ()):
            if isinstance(dim, int) or not _is_bare(dim):
                continue
            lo, opt, hi = spec.min_shape[d], spec.opt_shape[d], spec.max_shape[d]
            info = table.get(dim)
            if info is None:
                table[dim] = SymbolInfo(dim, lo, opt, hi, [(i, d)])
                continue
            info.min, info.max = max(info.min, lo), min(info.max, hi)
            info.opt = min(max(info.opt, info.min), info.max)
            info.sources.append((i, d))
    for i, spec in enumerate(specs):
        for d, dim in enumerate(spec.symbolic_shape or ()):
            missing = symbols_in(dim) - set(table)
            if missing:
                raise CaptureError(
                    f"{_label(spec, i)} dimension {d} is {dim} in the captured graph: the model constrains it (e.g. to a "
                    f"multiple of a size) through {sorted(missing)}, which no input has as a whole dimension, so Kiln cannot "
                    "read it at call time. What to do: give that dimension a static size."
                )
    for info in table.values():
        if info.min > info.max:
            where = ", ".join(f"{_label(specs[i], i)} dim {d}" for i, d in info.sources)
            raise CaptureError(
                f"{where} must be equal (the model requires it), but their ranges do not overlap. Give them the same range."
            )
    return table


def verify_small_sizes(
    module: torch.nn.Module, gm: torch.fx.GraphModule, specs: list[Input], flat_spec: pytree.TreeSpec, device: torch.device
) -> None:
    """Allow sizes below EXPORT_MIN only if the captured graph still computes what the model does there."""
    table = symbol_table(specs)
    small = {name: info.min for name, info in table.items() if info.min < EXPORT_MIN}
    if not small:
        return
    env = {name: small.get(name, _example_value(specs, info)) for name, info in table.items()}
    examples = []
    for spec in specs:
        dims = spec.symbolic_shape or list(spec.opt_shape)
        example = Input(tuple(evaluate(d, env) for d in dims), dtype=spec.dtype, format=spec.format).example(device)
        # Integer inputs are mostly indices, and at size 1 the only index every table has is 0.
        examples.append(example if example.is_floating_point() else torch.zeros_like(example))
    args, kwargs = pytree.tree_unflatten(examples, flat_spec)
    what = ", ".join(f"{_label(specs[i], i)} dim {d} = {small[name]}" for name in small for i, d in table[name].sources)
    try:
        with torch.no_grad():
            expected = pytree.tree_leaves(module(*args, **kwargs))
    except Exception:
        # The model itself refuses these example values (an index past a size-1 table, say): the
        # values say nothing about the capture, so only the shapes the graph records are checked.
        _verify_small_shapes(gm, env, examples, what, small, specs)
        return
    try:
        with torch.no_grad():
            checker = _ShapeChecker(gm, env)
            got = list(checker.run(*examples))
    except Exception as exc:
        raise _small_size_error(what, f"running it there failed ({type(exc).__name__}: {str(exc).splitlines()[0]})", small, specs) from exc
    problem = checker.problem or _compare(got, expected)
    if problem:
        raise _small_size_error(what, problem, small, specs)


def verify_largest_sizes(
    module: torch.nn.Module, gm: torch.fx.GraphModule, specs: list[Input], flat_spec: pytree.TreeSpec, device: torch.device
) -> None:
    """The captured graph's output shapes at max_shape must be the model's: shapes only, on fake tensors.

    torch.export can fix a number computed from a dynamic size without a guard (F.interpolate's
    scale_factor=x.shape[2] / 4 is recorded as the float seen at the example size); such a graph
    is right at the example size only and wrong elsewhere.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    table = symbol_table(specs)
    if not table or any(info.max >= UNBOUNDED for info in table.values()):
        return
    env = {name: info.max for name, info in table.items()}
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        examples = []
        for spec in specs:
            dims = spec.symbolic_shape or list(spec.opt_shape)
            examples.append(mode.from_tensor(torch.empty(evaluate_shape(dims, env), dtype=spec.dtype, device=device), static_shapes=True))
        args, kwargs = pytree.tree_unflatten(examples, flat_spec)
        try:
            with torch.no_grad():
                expected = [tuple(t.shape) for t in pytree.tree_leaves(module(*args, **kwargs)) if isinstance(t, torch.Tensor)]
                checker = _ShapeChecker(gm, env)
                got = [tuple(t.shape) for t in checker.run(*examples) if isinstance(t, torch.Tensor)]
        except Exception:  # an op without a fake kernel: nothing can be said from shapes
            return
    if got != expected:
        where = ", ".join(f"{name} = {value}" for name, value in env.items())
        raise CaptureError(
            f"torch.export captured a graph that is right only at the example size: at the largest sizes ({where}) it "
            f"gives output shapes {got} where the model gives {expected}. The model computes a number from a dynamic "
            "size that export fixed to its example value (e.g. F.interpolate(scale_factor=x.shape[2] / 4)). What to do: "
            "compute the output size as an int (size=(x.shape[2] * 2, ...)) instead of a float scale, or give that "
            "dimension a static size."
        )


def _verify_small_shapes(gm: torch.fx.GraphModule, env: dict[str, int], examples: list[torch.Tensor], what: str, small, specs) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fakes = [mode.from_tensor(e, static_shapes=True) for e in examples]
        checker = _ShapeChecker(gm, env)
        try:
            checker.run(*fakes)
        except Exception as exc:
            failed = f"running it there failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            raise _small_size_error(what, failed, small, specs) from exc
    if checker.problem:
        raise _small_size_error(what, checker.problem, small, specs)


def check_symbols(values: Sequence[torch.Tensor], specs: Sequence[Input]) -> None:
    """Dims that share a symbol (or a relation) at compile time must agree at call time."""
    if not any(s.symbolic_shape for s in specs):
        return
    env: dict[str, int] = {}
    origin: dict[str, tuple[int, int]] = {}
    for i, (value, spec) in enumerate(zip(values, specs)):
        for d, dim in enumerate(spec.symbolic_shape or ()):
            if isinstance(dim, str) and _is_bare(dim) and dim not in env:
                env[dim] = value.shape[d]
                origin[dim] = (i, d)
    for i, (value, spec) in enumerate(zip(values, specs)):
        for d, dim in enumerate(spec.symbolic_shape or ()):
            if isinstance(dim, int):
                continue
            expected = evaluate(dim, env)
            if value.shape[d] == expected:
                continue
            j, e = origin[next(iter(symbols_in(dim)))]
            relation = "equal" if _is_bare(dim) else f"{dim} where {', '.join(f'{k}={env[k]}' for k in sorted(symbols_in(dim)))}"
            raise InputMismatchError(
                f"{_label(spec, i)} has shape {tuple(value.shape)}: dimension {d} is {value.shape[d]}, but the model needs it "
                f"{'equal to' if _is_bare(dim) else 'to be'} {expected} ({relation}; read from {_label(specs[j], j)} "
                f"dimension {e}). Pass inputs whose sizes agree, as at compile time."
            )


def describe_symbols(specs: Sequence[Input]) -> list[str]:
    """One line per symbol for the partition report: 's0 = 1..128 (opt 32): x dim 0, mask dim 0'."""
    lines = []
    for info in symbol_table(specs).values():
        where = ", ".join(f"{specs[i].name or f'input #{i}'} dim {d}" for i, d in info.sources)
        lines.append(f"{info.name} = {info.min}..{info.max} (opt {info.opt}): {where}")
    return lines


class _ShapeChecker(torch.fx.Interpreter):
    """Runs the graph and compares every node's real shape with its recorded symbolic shape at `env`.

    Converters build the engine from the recorded shapes, so the graph computing the right
    values is not enough: a squeeze(0) traced at size >= 2 is recorded as keeping the dim.
    """

    def __init__(self, gm: torch.fx.GraphModule, env: dict[str, int]):
        super().__init__(gm)
        self.sizes = env
        self.problem: str | None = None

    def run_node(self, node):
        result = super().run_node(node)
        if self.problem is None:
            recorded = node.meta.get("val")
            pairs = zip(pytree.tree_leaves(result), pytree.tree_leaves(recorded))
            for real, fake in pairs:
                if isinstance(real, torch.Tensor) and isinstance(fake, torch.Tensor):
                    want = [self._value(d) for d in fake.shape]
                    if list(real.shape) != want:
                        self.problem = (
                            f"{node.name} ({node.target}) makes shape {tuple(real.shape)} there, where the graph recorded "
                            f"{tuple(str(d) for d in fake.shape)} = {tuple(want)}"
                        )
        return result

    def _value(self, dim) -> int:
        if isinstance(dim, int):
            return dim
        expr = dim.node.expr
        return int(expr.xreplace({s: self.sizes[s.name] for s in expr.free_symbols}))


def _export_max(hi: int) -> int | None:
    return None if hi >= UNBOUNDED else hi


def _example_value(specs: Sequence[Input], info: SymbolInfo) -> int:
    i, d = info.sources[0]
    return capture_shape(specs[i])[d]


def _compare(got: list, expected: list) -> str | None:
    if len(got) != len(expected):
        return f"it returns {len(got)} outputs where the model returns {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected)):
        if not isinstance(e, torch.Tensor):
            continue
        if not isinstance(g, torch.Tensor) or g.shape != e.shape:
            return f"output {k} has shape {tuple(getattr(g, 'shape', ()))} where the model gives {tuple(e.shape)}"
        if e.dtype.is_floating_point:
            scale = max(e.abs().max().item(), 1.0) if e.numel() else 1.0
            if e.numel() and (g.double() - e.double()).abs().max().item() > SMALL_SIZE_RTOL * scale:
                return f"output {k} differs from the model's"
        elif not torch.equal(g, e):
            return f"output {k} differs from the model's"
    return None


def _small_size_error(what: str, problem: str, small: dict[str, int] | None = None, specs: list[Input] | None = None) -> CaptureError:
    return SmallSizeError(
        f"the range includes {what}, but torch.export traces dynamic sizes from {EXPORT_MIN} up, and the graph it "
        f"captured does not hold at that size: {problem}. The model treats that size specially (a squeeze, a "
        f"broadcast, or a branch on the size). What to do: start the range at {EXPORT_MIN} and compile a second "
        "module with the static small size for those calls.",
        small,
        specs,
    )


def _is_bare(dim: str) -> bool:
    return dim.isidentifier()


def _replace(shape: tuple[int, ...], d: int, value: int) -> tuple[int, ...]:
    return tuple(value if k == d else s for k, s in enumerate(shape))


def _label(spec: Input, index: int) -> str:
    return f"input #{index}" + (f" ({spec.name!r})" if spec.name else "")
