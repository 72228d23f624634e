"""Pointwise programs: element-wise ops over numbered values, as JSON-able data.

Values 0..num_inputs-1 are the inputs; op i makes value num_inputs + i. An op is
{"kind": layer kind, "op": its op name, "args": [value numbers], "attrs": {...}} where kind is
one of the element-wise layer kinds (OP_KINDS) and attrs are that layer's attributes, so a
program is exactly the layers it replaced, and `evaluate` runs them through their reference
tactics. `emit` renders the same ops as Triton statements over FP32 (and boolean) values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.ir.network import Layer
from kiln.engine.kernels.elementwise import BINARY_TRITON
from kiln.engine.kernels.pointwise import UNARY_TRITON
from kiln.engine.kernels.quantized import quantize_triton_op
from kiln.engine.kernels.registry import REFERENCE, RunContext, get_tactic

OP_KINDS = frozenset({"unary", "binary", "where", "cast", "copy", "quantize"})
# Ops whose value is not an expression over their operands' values at the element being computed: a
# concat reads element (..., c, ...) of the piece that holds channel c, at (..., c - start, ...). Only a
# template that walks the output and knows each element's index (kernels/fused_pointwise.py) renders
# them, reading the pieces where they lie; the others (GEMM epilogues, reduction prologues) never get one:
# is_generatable says no to them, and fuse_pointwise alone puts them in a group (at its head).
INDEXED_KINDS = frozenset({"concat"})
# dtypes a generated kernel loads and stores: floats are computed in FP32, booleans as int1.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
VALUE_DTYPES = (*FLOAT_DTYPES, torch.bool)
# 8-bit values a generated kernel stores and never loads: what a `quantize` op makes, for the 8-bit layers that read it.
EIGHT_BIT_DTYPES = (torch.int8, torch.float8_e4m3fn)
_TRITON_FLOAT = {"float16": "tl.float16", "bfloat16": "tl.bfloat16", "float32": "tl.float32"}


@dataclass(frozen=True)
class Program:
    num_inputs: int
    ops: tuple[dict, ...]
    outputs: tuple[int, ...]

    def to_json(self) -> dict:
        return {"num_inputs": self.num_inputs, "ops": [dict(op) for op in self.ops], "outputs": list(self.outputs)}

    @classmethod
    def from_json(cls, data: dict) -> Program:
        return cls(int(data["num_inputs"]), tuple(dict(op) for op in data["ops"]), tuple(int(o) for o in data["outputs"]))


def is_generatable(layer: Layer) -> bool:
    """Whether one layer's arithmetic has a Triton form (its tensors' dtypes are checked by the caller)."""
    a = layer.attrs
    if layer.kind == "unary":
        return a.get("op") in UNARY_TRITON and all(_finite(v) for k, v in a.items() if k != "op")
    if layer.kind == "binary":
        if a.get("op") not in BINARY_TRITON or a.get("alpha", 1) != 1 and a.get("op") not in ("add", "sub"):
            return False
        # A scalar from a dynamic size is a symbol expression evaluated per call: not a literal.
        return layer.inputs[1] is not None or (isinstance(a.get("scalar"), (int, float)) and _finite(a["scalar"]))
    if layer.kind == "cast":
        return dtype_from_name(a["dtype"]) in VALUE_DTYPES
    if layer.kind == "quantize":
        return a.get("qdtype") in ("int8", "fp8") and all(_finite(a.get(k, 0)) for k in ("scale", "zero_point", "qmin", "qmax"))
    return layer.kind in ("where", "copy")


def reads_pieces(program: Program) -> bool:
    """Whether the program has an indexed op (a concat): only the flat generated kernel renders it."""
    return any(op["kind"] in INDEXED_KINDS for op in program.ops)


def concat_pieces(program: Program) -> dict[int, tuple[int, int]]:
    """Input number -> (index of the concat op reading it, its place among that concat's pieces)."""
    return {i: (k, j) for k, op in enumerate(program.ops) if op["kind"] in INDEXED_KINDS for j, i in enumerate(op["args"])}


def values_fit(layer: Layer, dtypes: Sequence[torch.dtype], out_dtypes: Sequence[torch.dtype]) -> bool:
    """Whether a generated kernel can load `dtypes` and store `out_dtypes` for this layer's op: floats and booleans
    in and out, and a quantize's 8-bit output (nothing in a kernel reads an 8-bit value back)."""
    stored = EIGHT_BIT_DTYPES if layer.kind == "quantize" else VALUE_DTYPES
    return all(d in VALUE_DTYPES for d in dtypes) and all(d in stored for d in out_dtypes)


def _finite(value) -> bool:
    return value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isfinite(value)


def evaluate(program: Program, inputs: Sequence[torch.Tensor | None], run: RunContext) -> list[torch.Tensor]:
    """The program run op by op through each op's reference tactic: what the unfused layers computed."""
    values = list(inputs)
    for op in program.ops:
        layer = Layer(op["kind"], op["kind"], [None] * len(op["args"]), [""], op["attrs"])
        args = [values[i] if i is not None else None for i in op["args"]]
        if op["kind"] == "binary" and len(args) == 1:
            args.append(None)  # the scalar operand lives in attrs
            layer.inputs = [None, None]
        values.append(get_tactic(op["kind"], REFERENCE).fn(layer, args, run))
    return [values[i] for i in program.outputs]


def emit(
    program: Program,
    input_exprs: Sequence[str | None],
    input_is_bool: Sequence[bool] = (),
    prefix: str = "v",
    indexed: Mapping[int, tuple[str, bool]] | None = None,
) -> tuple[list[str], list[str]]:
    """Triton statements computing the program from already-loaded inputs, and the names of its outputs.

    `input_exprs` are expressions of the template (a variable, a tl.load(...) text); floats must
    already be FP32; None for an input only an indexed op reads (a concat's piece, never loaded as such).
    `indexed` gives, by op number, the (expression, is_bool) the template computed for each indexed op
    (a concat's value read where its pieces lie). The statements assign `{prefix}{i}` for every value,
    so a template can put them anywhere in its body (indented by the caller) and store the returned names.
    """
    bools = list(input_is_bool) or [False] * program.num_inputs
    names = [f"{prefix}{i}" for i in range(program.num_inputs + len(program.ops))]
    lines = [f"{names[i]} = {expr}" for i, expr in enumerate(input_exprs) if expr is not None]
    for k, op in enumerate(program.ops):
        args = [names[i] for i in op["args"]]
        if op["kind"] in INDEXED_KINDS:
            if indexed is None or k not in indexed:
                raise KeyError(f"a {op['kind']} op needs a template that reads its pieces in place (kernels/fused_pointwise.py)")
            text, is_bool = indexed[k]
        else:
            text, is_bool = _op_text(op, args, [bools[i] for i in op["args"]])
        lines.append(f"{names[program.num_inputs + k]} = {text}")
        bools.append(is_bool)
    return lines, [names[i] for i in program.outputs]


def _op_text(op: dict, args: list[str], arg_bools: list[bool]) -> tuple[str, bool]:
    kind, a = op["kind"], op["attrs"]
    if kind == "unary":
        return f"({UNARY_TRITON[a['op']](args[0], a)})", False
    if kind == "binary":
        lhs = _as_float(args[0], arg_bools[0])
        rhs = _as_float(args[1], arg_bools[1]) if len(args) > 1 else repr(float(a["scalar"]))
        alpha = a.get("alpha", 1)
        if alpha != 1:
            rhs = f"({rhs} * {float(alpha)!r})"
        return f"({BINARY_TRITON[a['op']](lhs, rhs)})", a["op"] in _BOOL_RESULTS
    if kind == "where":
        return f"tl.where({args[0]}, {_as_float(args[1], arg_bools[1])}, {_as_float(args[2], arg_bools[2])})", False
    if kind == "cast":
        dtype = a["dtype"]
        if dtype == "bool":
            return (args[0] if arg_bools[0] else f"({args[0]} != 0.0)"), True
        value = _as_float(args[0], arg_bools[0])
        # A cast to a narrower float is a real rounding the model asked for: keep it.
        return (value if dtype == "float32" else f"{value}.to({_TRITON_FLOAT[dtype]}).to(tl.float32)"), False
    if kind == "copy":
        return args[0], arg_bools[0]
    if kind == "quantize":
        return f"({quantize_triton_op(args[0], a)})", False
    raise KeyError(f"no Triton form for layer kind {kind!r}")


_BOOL_RESULTS = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or"})


def _as_float(name: str, is_bool: bool) -> str:
    return f"{name}.to(tl.float32)" if is_bool else name
