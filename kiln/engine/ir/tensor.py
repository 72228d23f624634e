"""TensorDesc: what the engine knows about one tensor before it exists."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kiln.engine.ir.dtypes import dtype_from_name, dtype_name
from kiln.engine.ir.symbolic import Dim


class Layout:
    CONTIGUOUS = "contiguous"
    CHANNELS_LAST = "channels_last"


@dataclass
class TensorDesc:
    name: str
    shape: list[Dim]
    dtype: torch.dtype
    layout: str = Layout.CONTIGUOUS
    # "activation" (made by a layer), "input" (a network input) or "constant" (a weight).
    role: str = "activation"
    extra: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": dtype_name(self.dtype), "layout": self.layout, "role": self.role}

    @classmethod
    def from_json(cls, data: dict) -> TensorDesc:
        return cls(data["name"], list(data["shape"]), dtype_from_name(data["dtype"]), data["layout"], data["role"])

    def __str__(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{dims} {dtype_name(self.dtype)}"
