"""The engine IR: a Network of typed layers over TensorDescs.

A Layer is data (kind, tensor names, JSON attrs), so Networks and Plans serialise
without pickling, and every stage after conversion (fusion, precision, tactic choice)
can rewrite them without knowing about FX.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kiln.engine.ir.symbolic import Dim, symbols_in
from kiln.engine.ir.tensor import TensorDesc


@dataclass
class Layer:
    kind: str
    name: str
    inputs: list[str | None]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    # The dtype the layer computes in; None means "the dtype of its tensors".
    precision: str | None = None
    # Where it came from, for the report: the FX node(s) and aten op(s).
    source: str = ""

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "attrs": self.attrs,
            "precision": self.precision,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict) -> Layer:
        return cls(
            data["kind"],
            data["name"],
            list(data["inputs"]),
            list(data["outputs"]),
            dict(data["attrs"]),
            data.get("precision"),
            data.get("source", ""),
        )


@dataclass
class SymbolRange:
    """A dynamic dimension: its range, the value tactics are timed at, and where to read it at call time."""

    name: str
    min: int
    opt: int
    max: int
    # (network input index, dim) pairs; all must agree at call time.
    sources: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "min": self.min, "opt": self.opt, "max": self.max, "sources": [list(s) for s in self.sources]}

    @classmethod
    def from_json(cls, data: dict) -> SymbolRange:
        return cls(data["name"], data["min"], data["opt"], data["max"], [tuple(s) for s in data["sources"]])


@dataclass
class Network:
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    tensors: dict[str, TensorDesc] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    symbols: dict[str, SymbolRange] = field(default_factory=dict)
    # Layers that launch work before the fusion passes and after the last pass (optimize/kernel_count.py).
    kernels_unfused: int | None = None
    kernels: int | None = None
    _used_names: set[str] = field(default_factory=set, repr=False)

    def new_name(self, base: str) -> str:
        base = base.replace(".", "_")
        if not self._used_names:
            self._used_names.update(self.tensors, (layer.name for layer in self.layers))
        name, i = base, 1
        while name in self._used_names:
            name = f"{base}_{i}"
            i += 1
        self._used_names.add(name)
        return name

    def add_input(self, name: str, shape: list[Dim], dtype: torch.dtype) -> TensorDesc:
        desc = TensorDesc(self.new_name(name), list(shape), dtype, role="input")
        self.tensors[desc.name] = desc
        self.inputs.append(desc.name)
        return desc

    def add_constant(self, name: str, value: torch.Tensor) -> TensorDesc:
        desc = TensorDesc(self.new_name(name), list(value.shape), value.dtype, role="constant")
        self.tensors[desc.name] = desc
        self.constants[desc.name] = value.detach()
        return desc

    def add_layer(
        self,
        kind: str,
        inputs: list[TensorDesc | None],
        outputs: list[tuple[list[Dim], torch.dtype]],
        attrs: dict | None = None,
        source: str = "",
    ) -> list[TensorDesc]:
        layer_name = self.new_name(f"{kind}")
        out_descs = []
        for i, (shape, dtype) in enumerate(outputs):
            desc = TensorDesc(self.new_name(f"{layer_name}_out{i}" if len(outputs) > 1 else f"{layer_name}_out"), list(shape), dtype)
            self.tensors[desc.name] = desc
            out_descs.append(desc)
        self.layers.append(
            Layer(
                kind,
                layer_name,
                [t.name if t is not None else None for t in inputs],
                [d.name for d in out_descs],
                dict(attrs or {}),
                source=source,
            )
        )
        return out_descs

    def consumers(self) -> dict[str, list[Layer]]:
        users: dict[str, list[Layer]] = {name: [] for name in self.tensors}
        for layer in self.layers:
            for name in layer.inputs:
                if name is not None:
                    users[name].append(layer)
        return users

    def producer(self) -> dict[str, Layer]:
        return {out: layer for layer in self.layers for out in layer.outputs}

    def free_symbols(self) -> set[str]:
        found: set[str] = set()
        for desc in self.tensors.values():
            for d in desc.shape:
                found |= symbols_in(d)
        return found

    def summary(self) -> str:
        lines = [f"Network: {len(self.layers)} layers, {len(self.constants)} constants"]
        for layer in self.layers:
            ins = ", ".join(i or "-" for i in layer.inputs)
            outs = ", ".join(f"{o}: {self.tensors[o]}" for o in layer.outputs)
            lines.append(f"  {layer.name:<24} {layer.kind:<12} ({ins}) -> {outs}")
        return "\n".join(lines)
