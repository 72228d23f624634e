"""Tactics: the ways to compute one layer kind. Each kind has a reference tactic in plain PyTorch.

A tactic is `fn(layer, inputs, run) -> Tensor | tuple[Tensor, ...]`, where `inputs` are the
layer's input tensors (None for an absent optional input) and `run` is the RunContext of the
call (symbol values for dynamic shapes). `when(layer, target)` says whether it applies to a
layer on a build target; `prepare(layer, weights)` reshapes the layer's weights once at build
time into what the tactic wants (layout, dtype); a `prepare` that changes values, not only their
order (a compressed 2:4 weight), gives `unprepare(layer, prepared) -> original` so a loaded plan
can hand the weight to another tactic (builder/retarget.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from kiln.engine.ir.network import Layer
from kiln.engine.ir.symbolic import Dim, evaluate_shape

REFERENCE = "reference"


@dataclass
class RunContext:
    """Per-call facts a tactic may need: the values of the symbolic dimensions."""

    symbols: Mapping[str, int]

    def shape(self, dims: list[Dim]) -> list[int]:
        return evaluate_shape(dims, self.symbols)


@dataclass(frozen=True)
class BuildTarget:
    """What the builder is building for: tactics decide from it whether they apply."""

    device: torch.device
    compute_dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass(frozen=True)
class Tactic:
    kind: str
    name: str
    fn: Callable
    when: Callable[[Layer, BuildTarget], bool]
    prepare: Callable[[Layer, dict], dict] | None = None
    unprepare: Callable[[Layer, torch.Tensor], torch.Tensor] | None = None
    # Fusion attributes this tactic computes when a layer carries them (FUSED_ATTRS); a layer
    # carrying one runs only on tactics that take it.
    takes: frozenset[str] = frozenset()

    @property
    def compiles_on_first_call(self) -> bool:
        """A Triton tactic (named triton_*, the registry's convention) JIT-compiles its kernel when first run at a shape
        class; the builder compiles those for a whole network at once, in parallel (builder/precompile.py)."""
        return self.name.startswith("triton")


_TACTICS: dict[str, dict[str, Tactic]] = {}


def _always(layer: Layer, target: BuildTarget) -> bool:
    return True


# Attributes fusion passes add to a layer that change what it computes: "epilogue" (a pointwise
# program on the output, optimize/fuse_gemm_epilogue.py) and "scaled_input" (input 0 multiplied
# by a last extra input first, optimize/fuse_input_scale.py).
FUSED_ATTRS = ("epilogue", "scaled_input")


def tactic(kind: str, name: str, when: Callable[[Layer, BuildTarget], bool] = _always, prepare=None, unprepare=None, takes=()):
    def register(fn):
        table = _TACTICS.setdefault(kind, {})
        if name in table:
            raise RuntimeError(f"tactic {name!r} registered twice for layer kind {kind!r}")
        table[name] = Tactic(kind, name, fn, when, prepare, unprepare, frozenset(takes))
        return fn

    return register


def reference(kind: str, takes=()):
    """The plain-PyTorch way to compute `kind`: runs on any device, the oracle for every other tactic."""
    return tactic(kind, REFERENCE, takes=takes)


def tactics_for(layer: Layer, target: BuildTarget) -> list[Tactic]:
    table = _TACTICS.get(layer.kind)
    if not table or REFERENCE not in table:
        raise KeyError(f"layer kind {layer.kind!r} has no reference tactic")
    # A layer carrying a fusion attribute may only run on tactics that compute it.
    fused = {a for a in FUSED_ATTRS if layer.attrs.get(a)}
    return [t for t in table.values() if fused <= t.takes and t.when(layer, target)]


def get_tactic(kind: str, name: str) -> Tactic:
    from kiln.errors import CorruptFileError

    try:
        return _TACTICS[kind][name]
    except KeyError:
        raise CorruptFileError(f"plan names tactic {name!r} for layer kind {kind!r}, which this Kiln does not have") from None


def layer_kinds() -> list[str]:
    return sorted(_TACTICS)
