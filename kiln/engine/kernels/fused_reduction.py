"""`fused_reduction`: one reduction layer with the element-wise work around it, as one generated kernel.

optimize/fuse_reductions.py makes this layer from a reduction (a group norm, a softmax, a
mean over spatial dims...) and the pointwise programs next to it:
- a *prologue*: the program that made the reduction's input (a residual add and layer scale
  before PoolFormer's GroupNorm, the relative-position bias added before Swin's softmax). Its
  output 0 is the reduction's input; its other outputs are values the rest of the network
  still reads (the residual stream itself), written by the same kernel as *handed-out* outputs;
- the reduction layer itself, kept as its kind and attrs, so its reference runs unchanged;
- an *epilogue*: the program applied to the reduction's result (input 0) and extra inputs. It may
  have several outputs, all of the result's shape: a LayerNorm whose output feeds both a residual
  add (in FP16) and an 8-bit linear writes the normalised row and its quantized copy, the epilogue's
  outputs being input 0 itself and a `quantize` op of it.

A *broadcast* layer (attrs["broadcast"]) is a reduction over the last dim whose kept result
([..., 1]) the epilogue reads back against whole rows: F.normalize's `x / norm(x).clamp_min(eps)`,
the expand between them being plain broadcasting. Its epilogue's outputs have the prologue's (the
row's) shape, and only a whole-row kernel (`generated_broadcast`, triton_reduce_rows.py) computes it.

Inputs: [*prologue inputs, *the reduction's other inputs (weight, bias...), *epilogue inputs
after its input 0]. Outputs: [*the epilogue's outputs (the results), *the prologue's handed-out values].

The reference runs the three parts through their own references, which is by construction
what the separate layers computed. Generated kernels register a tactic for this kind each in
its own file (triton_group_norm.py, triton_softmax.py, triton_reduce.py) and declare, with
`generated_reduction`, which reductions they compute, so the fusion pass only builds layers
some kernel can run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.ir.network import Layer
from kiln.engine.ir.tensor import TensorDesc
from kiln.engine.kernels.codegen.program import Program, evaluate
from kiln.engine.kernels.fused_pointwise import run_generated, triton
from kiln.engine.kernels.registry import REFERENCE, RunContext, get_tactic, reference, tactic
from kiln.engine.runtime.executor import arena_output

# The kind carries its own "epilogue" attribute (registry.FUSED_ATTRS): every tactic registered for it computes it.
TAKES = ("epilogue",)
# A program that hands its one input through: the prologue or epilogue of a layer that has none.
IDENTITY = Program(1, (), (0,))

class _Declared:
    """kind -> predicates(reduction attrs, input desc): which reductions of that kind a family of generated kernels
    computes. Fusion asks before it makes a group that only such a kernel would run fast."""

    def __init__(self) -> None:
        self.table: dict[str, list[Callable[[dict, TensorDesc], bool]]] = {}

    def declare(self, kind: str):
        def register(predicate):
            self.table.setdefault(kind, []).append(predicate)
            return predicate

        return register

    def covers(self, kind: str, attrs: dict, x: TensorDesc) -> bool:
        return any(p(attrs, x) for p in self.table.get(kind, ()))


# Kernels that take a reduction with its prologue and epilogue, and whole-row kernels that also broadcast its
# result back over the row into the epilogue (F.normalize's divide).
_GENERATED, _BROADCAST = _Declared(), _Declared()


def generated_reduction(kind: str):
    """Declare that a generated kernel computes some reductions of layer kind `kind` (fusion asks `has_generated`)."""
    return _GENERATED.declare(kind)


def has_generated(kind: str, attrs: dict, x: TensorDesc) -> bool:
    return _GENERATED.covers(kind, attrs, x)


def generated_broadcast(kind: str):
    """Declare that a whole-row kernel computes some reductions of `kind` for a broadcast epilogue (`has_generated_broadcast`)."""
    return _BROADCAST.declare(kind)


def has_generated_broadcast(kind: str, attrs: dict, x: TensorDesc) -> bool:
    return _BROADCAST.covers(kind, attrs, x)


@dataclass
class FusedParts:
    """A fused_reduction layer's inputs split into its three parts (a plain reduction layer has identity programs)."""

    kind: str
    attrs: dict
    prologue: Program
    prologue_inputs: list
    extras: list
    epilogue: Program
    epilogue_inputs: list  # the epilogue's inputs after its input 0, the reduction's result
    out_dtypes: list[torch.dtype]  # the results' (the epilogue's outputs), then the handed-out values'
    num_results: int = 1  # outputs of the epilogue: out_dtypes[:num_results]

    @property
    def handed_dtypes(self) -> list[torch.dtype]:
        return self.out_dtypes[self.num_results :]


def split_inputs(layer: Layer, inputs: list, run: RunContext) -> FusedParts:
    a = layer.attrs
    prologue = Program.from_json(a["prologue"]) if a.get("prologue") else IDENTITY
    epilogue = Program.from_json(a["epilogue"]) if a.get("epilogue") else IDENTITY
    p, e = prologue.num_inputs, a["reduction"]["num_extras"]
    prologue_inputs = list(inputs[:p])
    if a.get("prologue_views"):
        # A prologue taken across reshapes (optimize/reshaped_prologue.py) reads each input in the reduction's shape.
        prologue_inputs = [_viewed(t, steps, run) for t, steps in zip(prologue_inputs, a["prologue_views"])]
    return FusedParts(
        a["reduction"]["kind"],
        a["reduction"]["attrs"],
        prologue,
        prologue_inputs,
        list(inputs[p : p + e]),
        epilogue,
        list(inputs[p + e :]),
        [dtype_from_name(d) for d in a["out_dtypes"]],
        len(epilogue.outputs),
    )


def run_parts(layer: Layer, inputs: list, run: RunContext, compute: Callable[[FusedParts, list], list[torch.Tensor]]):
    """A generated tactic's body: split the fused layer's inputs, compute into the arena's buffers, return as the layer does."""
    parts = split_inputs(layer, inputs, run)
    outs = compute(parts, [arena_output(run, i) for i in range(len(parts.out_dtypes))])
    return outs[0] if len(outs) == 1 else tuple(outs)


def _viewed(t: torch.Tensor, steps: list, run: RunContext) -> torch.Tensor:
    for broadcast, shape in steps:
        t = t.expand(run.shape(broadcast)).reshape(run.shape(shape))
    return t


def plain_parts(kind: str, attrs: dict, inputs: list, out_dtype: torch.dtype) -> FusedParts:
    """A reduction layer that fused nothing, in the form the generated kernels take."""
    return FusedParts(kind, attrs, IDENTITY, [inputs[0]], list(inputs[1:]), IDENTITY, [], [out_dtype])


@reference("fused_reduction", takes=TAKES)
def fused_reduction_reference(layer, inputs, run):
    parts = split_inputs(layer, inputs, run)
    x, *handed = evaluate(parts.prologue, parts.prologue_inputs, run)
    reduction = Layer(parts.kind, layer.name, [None] * (1 + len(parts.extras)), [""], parts.attrs)
    result = get_tactic(parts.kind, REFERENCE).fn(reduction, [x, *parts.extras], run)
    results = evaluate(parts.epilogue, [result, *parts.epilogue_inputs], run)
    outs = [v.to(d) if v.dtype != d else v for v, d in zip([*results, *handed], parts.out_dtypes)]
    return outs[0] if len(outs) == 1 else tuple(outs)


def _unfused_applies(layer, target) -> bool:
    return triton is not None and target.is_cuda and "dtypes" in layer.attrs["reduction"]


@tactic("fused_reduction", "triton_unfused", when=_unfused_applies, takes=TAKES)
def fused_reduction_unfused(layer, inputs, run):
    """The parts one after another, each on the kernel it had before fusion: the prologue and epilogue as
    generated pointwise kernels, the reduction on its own best kernel (UNFUSED_MIDDLE, else its reference).
    The builder times this against the one-kernel tactics, so fusing never costs what the separate layers
    ran at, even where a generated reduction kernel is the slower one."""
    parts = split_inputs(layer, inputs, run)
    x_dtype, mid_dtype = (dtype_from_name(d) for d in layer.attrs["reduction"]["dtypes"])
    k = parts.num_results
    if parts.prologue is IDENTITY:
        x, handed = parts.prologue_inputs[0], []
    else:
        planned = [None, *(arena_output(run, i) for i in range(k, len(parts.out_dtypes)))]
        x, *handed = run_generated(parts.prologue, parts.prologue_inputs, [x_dtype, *parts.handed_dtypes], planned)
    middle = UNFUSED_MIDDLE.get((parts.kind, parts.attrs.get("type")), get_tactic(parts.kind, REFERENCE).fn)
    reduction = Layer(parts.kind, layer.name, [None] * (1 + len(parts.extras)), [""], parts.attrs)
    # Without the arena: the planned buffers are the fused layer's outputs, not the middle value's.
    result = middle(reduction, [x, *parts.extras], RunContext(run.symbols))
    if parts.epilogue is not IDENTITY:
        planned = [arena_output(run, i) for i in range(k)]
        results = run_generated(parts.epilogue, [result, *parts.epilogue_inputs], parts.out_dtypes[:k], planned)
    else:
        results = [result.to(mid_dtype) if result.dtype != mid_dtype else result]
    outs = [*results, *handed]
    return outs[0] if len(outs) == 1 else tuple(outs)


# (kind, type) -> a plain tactic faster than the reference for that reduction, as its kernel module registers it.
UNFUSED_MIDDLE: dict[tuple[str, str | None], Callable] = {}
