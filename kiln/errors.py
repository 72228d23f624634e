"""Kiln's exceptions. Every error names what was wrong and what the user can do."""


class KilnError(Exception):
    """Base class for every error Kiln raises on purpose."""


class CaptureError(KilnError):
    """torch.export could not capture the model."""


class SmallSizeError(CaptureError):
    """The graph torch.export traced from size 2 up does not hold at a smaller size of the range.

    `small` maps each such symbol to its smallest size; `specs` are the captured input specs
    (with their symbolic shapes), so kiln.compile can build a separate engine for those sizes.
    """

    def __init__(self, message: str, small: dict | None = None, specs: list | None = None):
        super().__init__(message)
        self.small = small or {}
        self.specs = specs or []


class UnsupportedOpError(KilnError):
    """require_full_compilation=True and some ops cannot run on the engine."""


class InputMismatchError(KilnError, ValueError):
    """A call's inputs do not match the Input specs the module was compiled for."""


class CorruptFileError(KilnError):
    """A .kiln file is truncated, damaged, or not a .kiln file at all."""


class ConversionError(KilnError):
    """A converter could not turn an FX node into engine layers."""


class OutOfMemoryError(KilnError):
    """The GPU ran out of memory while building an engine; nothing from the build is left allocated."""


class KilnWarning(UserWarning):
    """Kiln went on with a fallback (a tactic skipped, a loaded plan re-targeted) that may cost speed, not correctness."""


class IncompatibleFileError(CorruptFileError):
    """A well-formed .kiln file written by a Kiln or PyTorch whose format this one cannot read."""
