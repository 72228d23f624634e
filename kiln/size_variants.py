"""Ranges from size 1 where the model treats the small size specially: one engine per case.

torch.export traces dynamic sizes from 2 up. Where the graph it made does not hold at a smaller
size of the range (a squeeze of the batch dim, a branch on `x.shape[0] == 1`), kiln.compile
compiles the model once more per small size, captured at that static size so export follows
the model's own code there, and once for the rest of the range (from 2). SizeVariants calls the
one whose input specs a call fits.
"""

from __future__ import annotations

import itertools

import torch
import torch.utils._pytree as pytree

from kiln.capture.dynamic import EXPORT_MIN
from kiln.capture.export import flatten_input_specs
from kiln.capture.input_spec import Input
from kiln.engine.ir.symbolic import evaluate, symbols_in
from kiln.errors import InputMismatchError, SmallSizeError

# Each small symbol doubles the engines to build; past this many the range is refused instead.
MAX_VARIANTS = 4


def size_variant_inputs(error: SmallSizeError, arg_inputs, kwarg_inputs) -> list[tuple[list, dict]] | None:
    """(arg_inputs, kwarg_inputs) per variant, the full-range one (from 2) last; None if too many."""
    choices = [[*range(lo, EXPORT_MIN), None] for lo in error.small.values()]
    combos = list(itertools.product(*choices))
    if len(combos) > MAX_VARIANTS or not error.specs:
        return None
    _, flat_spec = flatten_input_specs(arg_inputs, kwarg_inputs)
    variants = []
    # The all-None combo (every small symbol from 2 up) comes last in product's order: the main engine.
    for combo in combos:
        fixed = {name: value for name, value in zip(error.small, combo) if value is not None}
        specs = [_variant(spec, fixed, set(error.small)) for spec in error.specs]
        args, kwargs = pytree.tree_unflatten(specs, flat_spec)
        variants.append((list(args), dict(kwargs)))
    return variants


def _variant(spec: Input, fixed: dict[str, int], small: set[str]) -> Input:
    lo, opt, hi = list(spec.min_shape), list(spec.opt_shape), list(spec.max_shape)
    for d, dim in enumerate(spec.symbolic_shape or ()):
        if isinstance(dim, int):
            continue
        names = symbols_in(dim)
        if names and names <= set(fixed):
            lo[d] = opt[d] = hi[d] = evaluate(dim, fixed)
        elif dim in small:
            lo[d] = max(lo[d], EXPORT_MIN)
            opt[d] = max(opt[d], lo[d])
    return Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=spec.dtype, format=spec.format, name=spec.name)


class SizeVariants(torch.nn.Module):
    """Several compiled modules for one model, each for part of the input range; a call goes to the one it fits."""

    def __init__(self, variants: list[torch.nn.Module]):
        super().__init__()
        self.variants = torch.nn.ModuleList(variants)

    @property
    def main(self) -> torch.nn.Module:
        """The engine for the range from size 2: its report describes the model."""
        return self.variants[-1]

    @property
    def device(self) -> torch.device:
        return self.main.device

    @property
    def report(self):
        return self.main.report

    @property
    def input_specs(self) -> list[Input]:
        return self.main.input_specs

    def forward(self, *args, **kwargs):
        from kiln.capture.dynamic import check_symbols
        from kiln.module import check_input

        flat = pytree.tree_leaves((args, kwargs))
        for variant in self.variants:
            try:
                for i, (value, spec) in enumerate(zip(flat, variant.input_specs)):
                    check_input(value, spec, i, variant.device)
                check_symbols(flat, variant.input_specs)
            except InputMismatchError:
                continue
            return variant(*args, **kwargs)
        return self.main(*args, **kwargs)  # raises the mismatch against the full range

    def extra_repr(self) -> str:
        return "variants=" + "; ".join(", ".join(s.describe() for s in v.input_specs) for v in self.variants)
