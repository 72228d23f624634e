"""One trace from the module to the core-ATen graph, where torch.export's public path takes two.

`torch.export.export` traces the module to the pre-dispatch (training) IR, and
`run_decompositions` then traces that whole graph a second time, through functionalization
and the decomposition table, with the same fake-tensor and proxy machinery per node. For a
MobileNetV3 that second trace, with the program it rebuilds around it, was 60-70% of capture.

torch.export can trace straight to the post-dispatch, functional ATen IR (`_export(...,
pre_dispatch=False)`, the path `run_decompositions` itself ends in); what its public entry
point lacks is a way to hand that trace a decomposition table. `run_decompositions` splits
the table into CompositeImplicitAutograd overrides (installed around the trace) and Python
decompositions (passed to the ATen tracer); `export_core_aten` does the same split and
applies both to the one trace. The graph it gives is node for node the one of
export + run_decompositions (same ops, names, shapes and provenance meta, checked by
tests/capture/test_trace.py).

Ranged inputs keep the two-trace path (see export_core_aten). Anything the one trace cannot
take falls back to the two-trace path, whose result (or
error, which kiln/capture/explain.py knows how to word) is then the answer: a model calling
an aliasing `prims` op, which functionalization refuses before Kiln can rewrite it
(kiln/capture/aliasing_prims.py), or a torch whose private export entry points moved.
"""

from __future__ import annotations

import functools
import threading
from unittest import mock

import torch

from kiln.capture.aliasing_prims import rewrite_aliasing_prims
from kiln.capture.decompositions import decomposition_table

# The override of CompositeImplicitAutograd kernels and the patched tracer entry are process-wide
# state (torch's run_decompositions installs the same overrides); one capture at a time holds them.
_TRACE_LOCK = threading.RLock()


def export_core_aten(module: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes) -> torch.export.ExportedProgram:
    """The module as a core-ATen ExportedProgram decomposed by Kiln's table (kiln/capture/decompositions.py)."""
    if dynamic_shapes is not None:
        # With symbolic sizes the ATen tracer records every SymInt operation as a node and takes a Python
        # stack trace for each (~16000 for MobileNetV3 over a batch range, against ~800 traces in the
        # two-trace path, which copies them from the first graph): the one trace was about 2x slower there.
        return export_two_traces(module, args, kwargs, dynamic_shapes)
    try:
        return export_one_trace(module, args, kwargs, dynamic_shapes)
    except Exception:  # noqa: BLE001 - the two-trace path decides: it succeeds, or its error is the one to explain
        return export_two_traces(module, args, kwargs, dynamic_shapes)


def export_two_traces(module: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes) -> torch.export.ExportedProgram:
    """torch.export's public path: the pre-dispatch IR, then run_decompositions traces it again."""
    program = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    rewrite_aliasing_prims(program)  # functionalization in run_decompositions refuses them
    return program.run_decompositions(decomposition_table())


def export_one_trace(module: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes) -> torch.export.ExportedProgram:
    """torch.export's non-strict ATen tracer, functionalizing and decomposing as it traces."""
    from torch.export import _trace
    from torch.export.exported_program import _override_composite_implicit_decomp

    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError("a ScriptModule cannot be exported")  # torch.export.export says so in its words
    cia_overrides, python_decompositions = _split_table()
    with _TRACE_LOCK:
        tracer = functools.partial(_trace._export_to_aten_ir, decomp_table=dict(python_decompositions))
        with (
            _override_composite_implicit_decomp(cia_overrides),
            mock.patch.object(_trace, "_export_to_aten_ir", tracer),
        ):
            return _trace._export(module, args, kwargs, dynamic_shapes, strict=False, pre_dispatch=False)


@functools.cache
def _split_table() -> tuple[dict, dict]:
    """run_decompositions' split of Kiln's table, made once: materialising it costs ~0.2 s a capture."""
    from torch.export.exported_program import _split_decomp_table_to_cia_and_python_decomp

    return _split_decomp_table_to_cia_and_python_decomp(decomposition_table().materialize())
