"""Symbolic dimensions: a dim is an int or an expression string over named symbols ("s0", "2*s0").

Expressions come from torch.export's SymInts at compile time and are evaluated at call
time from the actual input sizes. They may come from a file, so they are parsed with
`ast` and evaluated over a whitelist of integer operators: never `eval`.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Mapping, Sequence

import torch

from kiln.errors import CorruptFileError

Dim = int | str

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
# sympy prints these for sizes: Mod/PythonMod for `s % k` (sizes are non-negative, so Python's % fits both),
# FloorDiv/CeilDiv in their function forms, Max/Min from broadcasting and clamps.
_FUNCS = {
    "Max": max,
    "Min": min,
    "max": max,
    "min": min,
    "Mod": operator.mod,
    "PythonMod": operator.mod,
    "FloorDiv": operator.floordiv,
    "CeilDiv": lambda a, b: -(-a // b),
}


def dim_of(value) -> Dim:
    """An int stays an int; a SymInt becomes the text of its expression (or its int if it is known)."""
    if isinstance(value, int):
        return value
    if isinstance(value, torch.SymInt):
        expr = value.node.expr
        if getattr(expr, "is_Integer", False):
            return int(expr)
        return str(expr).replace(" ", "")
    raise TypeError(f"not a dimension: {value!r}")


def shape_of(shape: Sequence) -> list[Dim]:
    return [dim_of(d) for d in shape]


def is_static(shape: Sequence[Dim]) -> bool:
    return all(isinstance(d, int) for d in shape)


def evaluate(dim: Dim, env: Mapping[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    try:
        tree = ast.parse(dim, mode="eval")
    except SyntaxError:
        raise CorruptFileError(f"bad symbolic dimension {dim!r}") from None
    return _eval(tree.body, env, dim)


def evaluate_shape(shape: Sequence[Dim], env: Mapping[str, int]) -> list[int]:
    return [d if isinstance(d, int) else evaluate(d, env) for d in shape]


def symbols_in(dim: Dim) -> set[str]:
    if isinstance(dim, int):
        return set()
    return {n.id for n in ast.walk(ast.parse(dim, mode="eval")) if isinstance(n, ast.Name) and n.id not in _FUNCS}


def _eval(node: ast.AST, env: Mapping[str, int], text: str) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise CorruptFileError(f"symbolic dimension {text!r} uses unknown symbol {node.id!r}")
        return env[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_eval(node.left, env, text), _eval(node.right, env, text))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, env, text)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        return _FUNCS[node.func.id](*(_eval(a, env, text) for a in node.args))
    raise CorruptFileError(f"symbolic dimension {text!r} is not a plain integer expression")
