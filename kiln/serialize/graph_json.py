"""The top-level FX graph of a CompiledModule <-> JSON, without pickle and without running code from the file.

Targets of call_function nodes are written as names and, on load, resolved only from an
allowlist: an aten-style OpOverload found with getattr on torch.ops, or one of a few pure
functions from `operator` (getitem, and integer arithmetic on sizes).
Arguments are JSON values; anything else (node references, tuples, dtypes, non-finite
floats) is a one-key object whose key says what it is.
"""

from __future__ import annotations

import math
import operator
import re

import torch
from torch.fx import Graph, Node

from kiln.errors import CorruptFileError, KilnError

# Pure functions of Python values that FX graphs call directly: getitem unpacks multi-output ops,
# the arithmetic ones compute sizes of dynamic dims (SymInt + SymInt). None can reach code.
_PYTHON_FUNCTIONS = {
    f"operator.{fn.__name__}": fn
    for fn in (operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod, operator.neg)
}
# One part of an op name: an identifier, but never a dunder, so getattr cannot reach object internals.
_NAME_PART = re.compile(r"^(?!__)[A-Za-z_][A-Za-z0-9_]*$")
_NODE_OPS = ("placeholder", "get_attr", "call_function", "call_module", "output")


def target_name(target) -> str:
    """The name a call_function target is saved under; KilnError if it is not on the allowlist."""
    for name, fn in _PYTHON_FUNCTIONS.items():
        if target is fn:
            return name
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    raise KilnError(
        f"cannot save: the PyTorch fallback graph calls {getattr(target, '__module__', '') or ''}.{name}, which is not an "
        "aten operator; a .kiln file may only hold torch.ops operators (so loading never runs code from the file). "
        "Rewrite that part of the model with torch operations."
    )


def resolve_target(name: str):
    """The callable for a saved target name, looked up only among torch.ops operators and _PYTHON_FUNCTIONS."""
    if name in _PYTHON_FUNCTIONS:
        return _PYTHON_FUNCTIONS[name]
    parts = name.split(".") if isinstance(name, str) else []
    if len(parts) != 3 or not all(_NAME_PART.match(p) for p in parts):
        raise CorruptFileError(f"graph calls {name!r}, which is not a torch.ops operator name (namespace.op.overload)")
    namespace, op, overload = parts
    try:
        found = getattr(getattr(getattr(torch.ops, namespace), op), overload)
    except (AttributeError, RuntimeError):
        raise CorruptFileError(f"graph calls operator {name!r}, which this PyTorch does not have") from None
    if not isinstance(found, torch._ops.OpOverload):
        raise CorruptFileError(f"graph calls {name!r}, which is not an operator overload")
    return found


def encode_arg(value, where: str):
    if isinstance(value, Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list):
        return [encode_arg(v, where) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode_arg(v, where) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode_arg(v, where) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    raise KilnError(f"cannot save: {where} has an argument of type {type(value).__name__} ({value!r}), which a .kiln file cannot hold.")


def _torch_constant(name, kind: type, what: str):
    # getattr on the torch module is safe here: the name is an identifier and the result must be of `kind`.
    value = getattr(torch, name, None) if isinstance(name, str) and _NAME_PART.match(name) else None
    if not isinstance(value, kind):
        raise CorruptFileError(f"graph names unknown {what} {name!r}")
    return value


_DECODERS = {
    "tuple": lambda v, ctx: tuple(decode_arg(x, ctx) for x in _as_list(v)),
    "dict": lambda v, ctx: {str(k): decode_arg(x, ctx) for k, x in _as_dict(v).items()},
    "float": lambda v, ctx: _as_float(v),
    "dtype": lambda v, ctx: _torch_constant(v, torch.dtype, "dtype"),
    "memory_format": lambda v, ctx: _torch_constant(v, torch.memory_format, "memory format"),
    "layout": lambda v, ctx: _torch_constant(v, torch.layout, "layout"),
    # Ops that create tensors (arange, full, _to_copy) name the device they were captured on;
    # a module loaded onto another device must create them there.
    "device": lambda v, ctx: ctx.device if ctx.device is not None else _as_device(v),
}


class _DecodeContext:
    def __init__(self, device: torch.device | None):
        self.nodes: dict[str, Node] = {}
        self.device = device


def decode_arg(value, ctx: _DecodeContext):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode_arg(v, ctx) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((kind, inner),) = value.items()
        if kind == "node":
            if inner not in ctx.nodes:
                raise CorruptFileError(f"graph refers to node {inner!r} before defining it")
            return ctx.nodes[inner]
        if kind in _DECODERS:
            return _DECODERS[kind](inner, ctx)
    raise CorruptFileError(f"graph has an argument Kiln cannot read: {str(value)[:80]}")


def graph_to_json(gm: torch.fx.GraphModule, engine_names: set[str]) -> list[dict]:
    out = []
    for node in gm.graph.nodes:
        entry = {"op": node.op, "name": node.name}
        if node.op == "call_function":
            entry["target"] = target_name(node.target)
        elif node.op == "call_module" and node.target not in engine_names:
            raise KilnError(f"cannot save: node {node.name} calls submodule {node.target!r}, which is not a Kiln engine block.")
        elif node.op in ("placeholder", "get_attr", "call_module"):
            entry["target"] = node.target
        where = f"node {node.name} ({entry.get('target', node.op)})"
        entry["args"] = [encode_arg(a, where) for a in node.args]
        entry["kwargs"] = {k: encode_arg(v, where) for k, v in node.kwargs.items()}
        out.append(entry)
    return out


def graph_from_json(nodes_json: list, engine_names: set[str], constant_names: set[str], device: torch.device | None = None) -> Graph:
    """Rebuild the graph; call_module and get_attr may only name the file's own engines and constants."""
    graph = Graph()
    ctx = _DecodeContext(device)
    nodes = ctx.nodes
    for entry in _as_list(nodes_json):
        entry = _as_dict(entry)
        op, name = entry.get("op"), entry.get("name")
        if op not in _NODE_OPS or not isinstance(name, str) or name in nodes:
            raise CorruptFileError(f"graph has a bad node entry (op={op!r}, name={name!r})")
        args = tuple(decode_arg(a, ctx) for a in _as_list(entry.get("args", [])))
        kwargs = {str(k): decode_arg(v, ctx) for k, v in _as_dict(entry.get("kwargs", {})).items()}
        target = entry.get("target")
        if op == "call_function":
            target = resolve_target(target)
        elif op == "call_module" and target not in engine_names:
            raise CorruptFileError(f"graph node {name} calls {target!r}, which is not one of the file's engine blocks")
        elif op == "get_attr" and target not in constant_names:
            raise CorruptFileError(f"graph node {name} reads constant {target!r}, which the file does not hold")
        elif op == "placeholder" and not isinstance(target, str):
            raise CorruptFileError(f"graph input {name} has no name")
        elif op == "output":
            target = "output"
        nodes[name] = graph.create_node(op, target, args, kwargs, name=name)
    if not any(n.op == "output" for n in graph.nodes):
        raise CorruptFileError("graph has no output node")
    return graph


def _as_list(value) -> list:
    if not isinstance(value, list):
        raise CorruptFileError(f"graph: expected a list, found {type(value).__name__}")
    return value


def _as_dict(value) -> dict:
    if not isinstance(value, dict):
        raise CorruptFileError(f"graph: expected an object, found {type(value).__name__}")
    return value


def _as_float(value) -> float:
    if value not in ("inf", "-inf", "nan"):
        raise CorruptFileError(f"graph has a bad float {value!r}")
    return float(value)


def _as_device(value) -> torch.device:
    try:
        return torch.device(value)
    except (RuntimeError, TypeError):
        raise CorruptFileError(f"graph names unknown device {value!r}") from None
