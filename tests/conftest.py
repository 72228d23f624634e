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
