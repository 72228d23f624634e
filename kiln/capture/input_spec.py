"""kiln.Input: the shape (or shape range), dtype and format of one model input."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kiln.engine.ir.dtypes import dtype_from_name, dtype_name
from kiln.errors import CorruptFileError, KilnError

_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


class Input:
    """One input of the compiled model.

    Either a static `shape`, or a range `min_shape` <= `opt_shape` <= `max_shape`
    (dimension by dimension). Tactics are timed at the opt shape.
    """

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        min_shape: Sequence[int] | None = None,
        opt_shape: Sequence[int] | None = None,
        max_shape: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        format: torch.memory_format = torch.contiguous_format,
        name: str | None = None,
    ) -> None:
        ranged = (min_shape, opt_shape, max_shape)
        if shape is not None and any(s is not None for s in ranged):
            raise KilnError("kiln.Input takes either shape= or min_shape/opt_shape/max_shape, not both.")
        if shape is not None:
            shape = _as_shape(shape, "shape")
            min_shape = opt_shape = max_shape = shape
        elif all(s is not None for s in ranged):
            min_shape, opt_shape, max_shape = (_as_shape(s, n) for s, n in zip(ranged, ("min_shape", "opt_shape", "max_shape")))
            if not len(min_shape) == len(opt_shape) == len(max_shape):
                raise KilnError(
                    f"kiln.Input{_label(name)}: min_shape {min_shape}, opt_shape {opt_shape} and max_shape "
                    f"{max_shape} must have the same rank."
                )
            for d, (lo, op, hi) in enumerate(zip(min_shape, opt_shape, max_shape)):
                if not lo <= op <= hi:
                    raise KilnError(f"kiln.Input{_label(name)}: dimension {d} needs min <= opt <= max, got {lo}, {op}, {hi}.")
        else:
            raise KilnError("kiln.Input needs shape=(...) or all three of min_shape=, opt_shape=, max_shape=.")
        if not isinstance(dtype, torch.dtype):
            raise KilnError(f"kiln.Input{_label(name)}: dtype must be a torch.dtype, got {dtype!r}.")
        if format not in _FORMATS.values():
            raise KilnError(f"kiln.Input{_label(name)}: format must be torch.contiguous_format or torch.channels_last.")
        self.min_shape: tuple[int, ...] = min_shape
        self.opt_shape: tuple[int, ...] = opt_shape
        self.max_shape: tuple[int, ...] = max_shape
        self.dtype = dtype
        self.format = format
        self.name = name
        # Set by capture on a ranged input: each dim as torch.export saw it, an int or a symbol
        # expression ("s0", "2*s0"); dims of different inputs with one symbol must agree at call time.
        self.symbolic_shape: list[int | str] | None = None

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, name: str | None = None) -> Input:
        fmt = (
            torch.channels_last
            if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
            else torch.contiguous_format
        )
        return cls(tuple(tensor.shape), dtype=tensor.dtype, format=fmt, name=name)

    @property
    def is_dynamic(self) -> bool:
        return self.min_shape != self.max_shape

    @property
    def shape(self) -> tuple[int, ...]:
        return self.opt_shape

    def dynamic_dims(self) -> list[int]:
        return [d for d, (lo, hi) in enumerate(zip(self.min_shape, self.max_shape)) if lo != hi]

    def example(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """A random tensor of the opt shape: used to capture and to time tactics."""
        shape = self.opt_shape
        if self.dtype.is_floating_point or self.dtype.is_complex:
            t = torch.randn(shape, dtype=self.dtype, device=device)
        elif self.dtype == torch.bool:
            t = torch.randint(0, 2, shape, device=device).bool()
        else:
            t = torch.randint(0, 2, shape, dtype=self.dtype, device=device)
        return t.contiguous(memory_format=self.format) if t.dim() == 4 else t

    def describe(self) -> str:
        shape = (
            str(tuple(self.opt_shape))
            if not self.is_dynamic
            else "("
            + ", ".join(str(o) if lo == hi else f"{lo}..{hi}" for lo, o, hi in zip(self.min_shape, self.opt_shape, self.max_shape))
            + ")"
        )
        return f"{shape} {dtype_name(self.dtype)}"

    def to_json(self) -> dict:
        return {
            "min_shape": list(self.min_shape),
            "opt_shape": list(self.opt_shape),
            "max_shape": list(self.max_shape),
            "dtype": dtype_name(self.dtype),
            "format": next(k for k, v in _FORMATS.items() if v == self.format),
            "name": self.name,
            "symbolic_shape": self.symbolic_shape,
        }

    @classmethod
    def from_json(cls, data: dict) -> Input:
        spec = cls(
            min_shape=data["min_shape"],
            opt_shape=data["opt_shape"],
            max_shape=data["max_shape"],
            dtype=dtype_from_name(data["dtype"]),
            format=_FORMATS[data["format"]],
            name=data.get("name"),
        )
        spec.symbolic_shape = _symbolic_shape(data.get("symbolic_shape"), len(spec.opt_shape))
        return spec

    def __repr__(self) -> str:
        if self.is_dynamic:
            shape = f"min_shape={self.min_shape}, opt_shape={self.opt_shape}, max_shape={self.max_shape}"
        else:
            shape = f"shape={self.opt_shape}"
        name = f", name={self.name!r}" if self.name else ""
        return f"kiln.Input({shape}, dtype={self.dtype}{name})"


def _as_shape(shape, what: str) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise KilnError(f"kiln.Input {what} must be a tuple of ints, got {shape!r}.")
    if any(d < 0 for d in shape):
        raise KilnError(f"kiln.Input {what} has a negative dimension: {shape!r}.")
    return tuple(shape)


def _symbolic_shape(dims, rank: int) -> list[int | str] | None:
    """A file's symbolic shape, checked: dims are evaluated at call time, so each must parse as an integer expression."""
    from kiln.engine.ir.symbolic import symbols_in

    if dims is None:
        return None
    if not isinstance(dims, list) or len(dims) != rank or not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in dims):
        raise CorruptFileError(f"input symbolic_shape {dims!r} is not a list of {rank} ints or expressions")
    for d in dims:
        if isinstance(d, str):
            try:
                symbols_in(d)
            except SyntaxError:
                raise CorruptFileError(f"input symbolic_shape has a bad dimension {d!r}") from None
    return dims


def _label(name: str | None) -> str:
    return f" {name!r}" if name else ""
