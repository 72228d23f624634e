"""engine.plan.Plan: what the builder decided, in a form the runtime executes and a file can hold."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kiln.engine.ir.dtypes import dtype_from_name, dtype_name
from kiln.engine.ir.network import Layer, SymbolRange
from kiln.engine.ir.tensor import TensorDesc

PLAN_FORMAT = 1


@dataclass
class Step:
    layer: Layer
    tactic: str
    # Milliseconds per candidate tactic measured by the builder (empty when nothing was timed).
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"layer": self.layer.to_json(), "tactic": self.tactic, "timings": self.timings}

    @classmethod
    def from_json(cls, data: dict) -> Step:
        return cls(Layer.from_json(data["layer"]), data["tactic"], dict(data.get("timings", {})))


@dataclass
class Plan:
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, TensorDesc]
    steps: list[Step]
    weights: dict[str, torch.Tensor]
    symbols: dict[str, SymbolRange] = field(default_factory=dict)
    device: str = "cpu"
    compute_dtype: torch.dtype = torch.float32
    # Layers the builder kept in FP32 although a lower precision was enabled, with the reason.
    kept_fp32: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """Everything but the weight values (those go to safetensors under their tensor names)."""
        return {
            "format": PLAN_FORMAT,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "tensors": [t.to_json() for t in self.tensors.values()],
            "steps": [s.to_json() for s in self.steps],
            "weights": sorted(self.weights),
            "symbols": [s.to_json() for s in self.symbols.values()],
            "device": self.device,
            "compute_dtype": dtype_name(self.compute_dtype),
            "kept_fp32": self.kept_fp32,
        }

    @classmethod
    def from_json(cls, data: dict, weights: dict[str, torch.Tensor]) -> Plan:
        tensors = [TensorDesc.from_json(t) for t in data["tensors"]]
        symbols = [SymbolRange.from_json(s) for s in data["symbols"]]
        return cls(
            inputs=list(data["inputs"]),
            outputs=list(data["outputs"]),
            tensors={t.name: t for t in tensors},
            steps=[Step.from_json(s) for s in data["steps"]],
            weights={name: weights[name] for name in data["weights"]},
            symbols={s.name: s for s in symbols},
            device=data["device"],
            compute_dtype=dtype_from_name(data["compute_dtype"]),
            kept_fp32=dict(data.get("kept_fp32", {})),
        )
