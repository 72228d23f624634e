"""`--input` values: `1x3x224x224`, a range per dimension `1-32x3x224x224` (opt = max) or `1-8-32x...`
(min-opt-max), and an optional dtype after a colon: `1x128:int64`."""

from __future__ import annotations

import torch

from kiln.capture.input_spec import Input
from kiln.cli.app import UsageError
from kiln.engine.ir.dtypes import dtype_from_name


class InputSpecError(UsageError):
    """An --input value that is not a shape."""


def parse_input(text: str) -> Input:
    shape_text, _, dtype_text = text.partition(":")
    dtype = torch.float32
    if dtype_text:
        try:
            dtype = dtype_from_name(dtype_text)
        except Exception as exc:  # dtype_from_name raises on a name it does not know
            raise InputSpecError(f"--input {text!r}: unknown dtype {dtype_text!r} (use float32, float16, bfloat16, int64, ...).") from exc
    lows, opts, highs = [], [], []
    for dim in shape_text.lower().split("x"):
        parts = dim.split("-")
        if not dim or len(parts) > 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise InputSpecError(
                f"--input {text!r}: dimension {dim!r} is not a positive size or a range LO-HI / LO-OPT-HI. "
                "Example: --input 1x3x224x224 or --input 1-32x3x224x224."
            )
        sizes = [int(p) for p in parts]
        lo, hi = sizes[0], sizes[-1]
        opt = sizes[1] if len(sizes) == 3 else hi
        if not lo <= opt <= hi:
            raise InputSpecError(f"--input {text!r}: dimension {dim!r} needs LO <= OPT <= HI.")
        lows.append(lo)
        opts.append(opt)
        highs.append(hi)
    if lows == highs:
        return Input(tuple(lows), dtype=dtype)
    return Input(min_shape=tuple(lows), opt_shape=tuple(opts), max_shape=tuple(highs), dtype=dtype)
