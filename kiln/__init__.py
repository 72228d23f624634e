"""Kiln: compile a PyTorch model into a fast inference engine, with PyTorch fallback."""

from kiln.api import compile
from kiln.capture.input_spec import Input
from kiln.errors import CaptureError, CorruptFileError, InputMismatchError, KilnError, UnsupportedOpError
from kiln.module import CompiledModule
from kiln.serialize import load, save

__version__ = "0.1.0"

__all__ = [
    "compile",
    "Input",
    "save",
    "load",
    "CompiledModule",
    "KilnError",
    "CaptureError",
    "CorruptFileError",
    "InputMismatchError",
    "UnsupportedOpError",
]
