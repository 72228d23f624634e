"""What kiln.compile accepts besides a plain nn.Module: an ExportedProgram, the module
torch.export makes of one (`program.module()`), and a module whose forward() takes no inputs.
"""

from __future__ import annotations

import inspect

import torch
import torch.utils._pytree as pytree
from torch.export.graph_signature import InputKind

from kiln.capture.input_spec import Input
from kiln.engine.ir.symbolic import dim_of
from kiln.errors import KilnError


def program_inputs(program: torch.export.ExportedProgram) -> tuple[list, dict]:
    """The program's user inputs as kiln.Input specs: static sizes as exported, symbolic ones over their export range.

    A symbolic dim's example size (its hint) becomes opt_shape, so tactics are timed where the
    program was traced.
    """
    ranges = {str(sym): vr for sym, vr in program.range_constraints.items()}
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in user:
        val = placeholders[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise KilnError(
                f"the ExportedProgram's input {name!r} is a {type(val).__name__}, not a tensor; kiln.compile takes tensor "
                "inputs only. Export a wrapper whose forward() takes tensors, or pass inputs= yourself."
            )
        lo, opt, hi = [], [], []
        for d, size in enumerate(val.shape):
            dim = dim_of(size)
            if isinstance(dim, int):
                lo.append(dim), opt.append(dim), hi.append(dim)
                continue
            vr = ranges.get(dim)
            # Unbounded is torch's int_oo, which is not a sympy Integer.
            if vr is None or not getattr(vr.upper, "is_Integer", False):
                raise KilnError(
                    f"the ExportedProgram's input {name!r} dimension {d} ({dim}) has no upper bound, and an engine plans its "
                    "memory for the largest size. Export with Dim(..., max=N), or pass inputs=[kiln.Input(min_shape=..., "
                    "opt_shape=..., max_shape=...)]."
                )
            lo.append(int(vr.lower)), hi.append(int(vr.upper))
            opt.append(min(max(int(size.node.hint), lo[-1]), hi[-1]))
        specs.append(Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=val.dtype, name=name))
    args, kwargs = pytree.tree_unflatten(specs, program.call_spec.in_spec)
    return list(args), dict(kwargs)


def switch_to_eval(module: torch.nn.Module) -> bool:
    """Put `module` in eval mode; False where it cannot switch.

    A module made by torch.export (`program.module()`) refuses .eval(): its mode was fixed when
    it was exported, so there is nothing to switch and capture takes its graph as it is.
    """
    try:
        module.eval()
    except NotImplementedError:
        return False
    return True


def takes_inputs(module: torch.nn.Module) -> bool:
    """Whether forward() has a parameter without a default (a model of constants takes none)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
