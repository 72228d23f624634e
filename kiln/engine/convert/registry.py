"""The converter registry: one decorated function per aten op.

Partitioning asks `support_of(node)` here, so the support table and the converters
cannot disagree.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.fx import Node
from torch.fx.operator_schemas import normalize_function

from kiln.engine.ir.network import Network
from kiln.engine.ir.symbolic import shape_of
from kiln.engine.ir.tensor import TensorDesc
from kiln.errors import ConversionError

# A capability check returns None when the converter can take the node, else the reason it cannot.
Check = Callable[[Node], str | None]


@dataclass(frozen=True)
class Converter:
    target: object
    fn: Callable
    check: Check | None


_CONVERTERS: dict[object, Converter] = {}

ENGINE_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool, torch.uint8, torch.int8}


def converter(*targets, supports: Check | None = None):
    """Register `fn(ctx, node)` as the converter of each aten OpOverload in `targets`."""

    def register(fn):
        for target in targets:
            if target in _CONVERTERS:
                raise RuntimeError(f"two converters registered for {target}")
            _CONVERTERS[target] = Converter(target, fn, supports)
        return fn

    return register


def registered_targets() -> list:
    return list(_CONVERTERS)


def support_of(node: Node, truncate_double: bool = True) -> str | None:
    """None if the engine can run `node`, else the reason it cannot (shown in the report)."""
    entry = _CONVERTERS.get(node.target)
    if entry is None:
        return "unsupported op"
    for value in _tensor_values(node):
        if value.dtype == torch.float64 and truncate_double:
            continue
        if value.dtype not in ENGINE_DTYPES:
            return f"dtype {str(value.dtype).removeprefix('torch.')}"
    if entry.check is not None:
        return entry.check(node)
    return None


def node_arguments(node: Node) -> dict:
    """Every argument of an aten call by its schema name, defaults filled in, so converters and checks never count positions."""
    bound = normalize_function(node.target, tuple(node.args), dict(node.kwargs), normalize_to_only_use_kwargs=True)
    if bound is None:
        raise ConversionError(f"the arguments of {node.name} do not match the schema of {node.target}")
    return bound.kwargs


def _tensor_values(node: Node):
    vals = [node.meta.get("val")]
    for arg in node.all_input_nodes:
        vals.append(arg.meta.get("val"))
    flat = []
    for v in vals:
        if isinstance(v, (tuple, list)):
            flat.extend(x for x in v if isinstance(x, torch.Tensor))
        elif isinstance(v, torch.Tensor):
            flat.append(v)
    return flat


class ConvertContext:
    """What a converter sees: the Network being built and the values of FX nodes converted so far."""

    def __init__(self, network: Network, attr_lookup: Callable[[str], torch.Tensor], truncate_double: bool = True):
        self.network = network
        self.values: dict[Node, object] = {}
        self._attr_lookup = attr_lookup
        self.truncate_double = truncate_double
        self.node: Node | None = None

    # --- inputs -----------------------------------------------------------------------------
    def tensor(self, arg) -> TensorDesc:
        """The TensorDesc of an FX argument: a converted node, a weight, or a scalar made a 0-d constant."""
        if isinstance(arg, TensorDesc):
            return arg
        if isinstance(arg, Node):
            value = self.values[arg]
            if not isinstance(value, TensorDesc):
                raise ConversionError(f"{self.where()}: argument {arg.name} is not a tensor")
            return value
        if isinstance(arg, torch.Tensor):
            return self.constant(arg, "const")
        if isinstance(arg, (bool, int, float)):
            dtype = torch.bool if isinstance(arg, bool) else torch.int64 if isinstance(arg, int) else torch.float32
            return self.constant(torch.tensor(arg, dtype=dtype), "scalar")
        raise ConversionError(f"{self.where()}: cannot use {arg!r} as a tensor")

    def maybe_tensor(self, arg) -> TensorDesc | None:
        return None if arg is None else self.tensor(arg)

    def value(self, arg):
        """A non-tensor argument (int, list of ints, SymInt node...) as a plain Python value."""
        if isinstance(arg, Node):
            return self.values[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def constant(self, value: torch.Tensor, name: str) -> TensorDesc:
        if value.dtype == torch.float64 and self.truncate_double:
            value = value.float()
        return self.network.add_constant(name, value)

    def constant_value(self, arg) -> torch.Tensor | None:
        """The weight behind an argument if it is a frozen constant, else None."""
        if isinstance(arg, Node) and arg.op == "get_attr":
            return self._attr_lookup(arg.target)
        return None

    # --- outputs ----------------------------------------------------------------------------
    def output_specs(self, node: Node | None = None) -> list:
        node = node or self.node
        val = node.meta["val"]
        vals = val if isinstance(val, (tuple, list)) else [val]
        return [(shape_of(v.shape), self._dtype(v.dtype)) if isinstance(v, torch.Tensor) else None for v in vals]

    def add(self, kind: str, inputs: list, attrs: dict | None = None, outputs: list | None = None):
        """Add one layer whose outputs are described by the current node's meta (or `outputs`).

        Returns one TensorDesc for a single output, else a list (None where the node's output is
        not a tensor the engine produces).
        """
        specs = outputs if outputs is not None else self.output_specs()
        made = self.network.add_layer(
            kind, [self.maybe_tensor(i) for i in inputs], [s for s in specs if s is not None], attrs, source=self._source()
        )
        if len(specs) == 1 and outputs is None and not isinstance(self.node.meta["val"], (tuple, list)):
            return made[0]
        it = iter(made)
        return [next(it) if s is not None else None for s in specs]

    def add_like(self, kind: str, inputs: list, shape, dtype, attrs: dict | None = None) -> TensorDesc:
        """Add an intermediate layer whose output is not the node's own (e.g. a cast before the op)."""
        return self.network.add_layer(kind, [self.maybe_tensor(i) for i in inputs], [(list(shape), dtype)], attrs, source=self._source())[0]

    def _dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if dtype == torch.float64 and self.truncate_double else dtype

    def _source(self) -> str:
        if self.node is None:
            return ""
        target = self.node.target
        return f"{self.node.name} ({getattr(target, '__name__', target)})"

    def where(self) -> str:
        return f"converting {self._source() or 'graph'}"


def convert_node(ctx: ConvertContext, node: Node):
    ctx.node = node
    if node.target is operator.getitem:
        return ctx.values[node.args[0]][node.args[1]]
    entry = _CONVERTERS.get(node.target)
    if entry is None:
        raise ConversionError(f"no converter for {node.target} ({node.name})")
    return entry.fn(ctx, node)
