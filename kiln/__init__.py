"""Kiln: compile a PyTorch model into a fast inference engine, with PyTorch fallback."""

from kiln import debug, ptq, sparsity  # kiln.ptq calibrators, kiln.debug.compare, kiln.sparsity.prune_2to4...
from kiln.api import compile
from kiln.capture.input_spec import Input
from kiln.dynamo import explain  # importing kiln.dynamo registers torch.compile(backend="kiln")
from kiln.engine.runtime.profiler import profile
from kiln.errors import (
    CaptureError,
    CorruptFileError,
    IncompatibleFileError,
    InputMismatchError,
    KilnError,
    KilnWarning,
    OutOfMemoryError,
    UnsupportedOpError,
)
from kiln.module import CompiledModule
from kiln.refit import RefitError, refit
from kiln.serialize import load, save

__version__ = "0.1.0"

__all__ = [
    "compile",
    "refit",
    "RefitError",
    "Input",
    "save",
    "load",
    "explain",
    "profile",
    "CompiledModule",
    "KilnError",
    "CaptureError",
    "CorruptFileError",
    "InputMismatchError",
    "UnsupportedOpError",
    "OutOfMemoryError",
    "KilnWarning",
    "IncompatibleFileError",
    "sparsity",
    "ptq",
    "debug",
]
