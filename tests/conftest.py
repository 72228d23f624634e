"""Without a GPU, Triton kernels run in Triton's interpreter (set before any kernel is defined)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_libdevice() -> None:
    """Triton's interpreter has no libdevice (it cannot call extern functions): give the generated
    kernels' libdevice calls numpy implementations, so the same kernel text runs on the CPU."""
    import math

    import numpy as np

    try:
        import triton.language as tl
        from triton.language.extra import libdevice
        from triton.runtime.interpreter import TensorHandle
    except ImportError:
        return

    def lift(np_fn):
        def call(*args, **kwargs):
            first = next(a for a in args if isinstance(a, tl.tensor))
            arrays = [a.handle.data if isinstance(a, tl.tensor) else np.asarray(a) for a in args]
            out = np.asarray(np_fn(*arrays)).astype(first.handle.data.dtype)
            return tl.tensor(TensorHandle(out, first.handle.dtype.scalar), first.type)

        return call

    erf = np.vectorize(math.erf, otypes=[np.float64])
    table = {
        "tanh": np.tanh, "erf": erf, "expm1": np.expm1, "log1p": np.log1p, "rint": np.rint, "trunc": np.trunc,
        "floor": np.floor, "ceil": np.ceil, "tan": np.tan, "atan": np.atan, "rsqrt": lambda x: 1.0 / np.sqrt(x),
        "fmod": np.fmod, "pow": np.power, "acos": np.arccos, "asin": np.arcsin, "acosh": np.arccosh, "asinh": np.arcsinh,
        "atanh": np.arctanh, "sinh": np.sinh, "cosh": np.cosh, "log10": np.log10, "atan2": np.arctan2,
    }  # fmt: skip
    for name, fn in table.items():
        setattr(libdevice, name, lift(fn))


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_libdevice()


def _materialize_cia_ops_once_per_registration_set() -> None:
    """torch.export's run_decompositions walks every op namespace (~27), and for each one queries the C++
    dispatcher for every CompositeImplicitAutograd op and materializes them all into torch.ops, twice per call:
    about 0.25 s of each ~1 s kiln.compile on a CPU, and most of this suite is small compiles. Materializing
    is idempotent (getattr on torch.ops), so it is skipped while the dispatcher's CIA registrations are the
    ones last materialized, and they are queried once per run_decompositions instead of once per namespace
    (nothing registers a C++ op in the middle of one). A newly registered op changes the list and is
    materialized as before: the same ops are found, the same decompositions run, the same graphs come out."""
    import functools
    import threading

    try:
        from torch._export import utils
        from torch.export import ExportedProgram
    except ImportError:
        return
    original = getattr(utils, "_materialize_cpp_cia_ops", None)
    if original is None or getattr(original, "_kiln_tests_memo", False):
        return
    materialized: list = [None]
    local = threading.local()  # local.checked: this thread's run_decompositions already saw the current list

    def materialize() -> None:
        if getattr(local, "checked", False):
            return
        registrations = torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")
        if registrations != materialized[0]:
            original()
            materialized[0] = registrations
        local.checked = getattr(local, "depth", 0) > 0

    run_decompositions = ExportedProgram.run_decompositions

    @functools.wraps(run_decompositions)
    def run_decompositions_checking_once(self, *args, **kwargs):
        local.depth = getattr(local, "depth", 0) + 1
        try:
            return run_decompositions(self, *args, **kwargs)
        finally:
            local.depth -= 1
            if local.depth == 0:
                local.checked = False

    materialize._kiln_tests_memo = True
    utils._materialize_cpp_cia_ops = materialize
    ExportedProgram.run_decompositions = run_decompositions_checking_once


_materialize_cia_ops_once_per_registration_set()


def _share_the_cores_between_xdist_workers() -> None:
    """Under pytest-xdist (`./run tests` runs `-n auto`), each worker's torch would start one thread per core:
    N workers x N threads on N cores. Each worker gets its share of the cores instead."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores_between_xdist_workers()

