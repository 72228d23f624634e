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
class ArenaPlan:
    """Where each activation lives in one buffer of `size` bytes; tensors whose lifetimes overlap never share bytes."""

    size: int
    # tensor name -> (byte offset, byte size at the max shapes)
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Live bytes at the worst step and the bytes a plan without reuse would need: the report shows both.
    peak_live: int = 0
    total_unshared: int = 0

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "offsets": {k: list(v) for k, v in self.offsets.items()},
            "peak_live": self.peak_live,
            "total_unshared": self.total_unshared,
        }

    @classmethod
    def from_json(cls, data: dict) -> ArenaPlan:
        offsets = {k: (int(v[0]), int(v[1])) for k, v in data["offsets"].items()}
        return cls(int(data["size"]), offsets, int(data.get("peak_live", 0)), int(data.get("total_unshared", 0)))


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
    # The activation arena planned from tensor lifetimes at the max symbol values (builder/memory.py).
    arena: ArenaPlan | None = None
    # Runtime: record one CUDA graph per input-shape profile, keep at most this many (LRU).
    cuda_graphs: bool = True
    max_cuda_graphs: int = 16
    tune_new_shapes: bool = False
    # Streams that may run this engine at once, each in its own buffers (runtime/cuda_graphs.py).
    max_execution_contexts: int = 4
    # Layers that launch work per forward pass before Kiln's fusions and in this plan (optimize/kernel_count.py
    # says what counts); None in plans saved before they were counted.
    kernels_unfused: int | None = None
    kernels: int | None = None

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
            "arena": self.arena.to_json() if self.arena is not None else None,
            "cuda_graphs": self.cuda_graphs,
            "max_cuda_graphs": self.max_cuda_graphs,
            "tune_new_shapes": self.tune_new_shapes,
            "max_execution_contexts": self.max_execution_contexts,
            "kernels_unfused": self.kernels_unfused,
            "kernels": self.kernels,
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
            arena=ArenaPlan.from_json(data["arena"]) if data.get("arena") else None,
            cuda_graphs=bool(data.get("cuda_graphs", True)),
            max_cuda_graphs=int(data.get("max_cuda_graphs", 16)),
            tune_new_shapes=bool(data.get("tune_new_shapes", False)),
            max_execution_contexts=int(data.get("max_execution_contexts", 4)),
            kernels_unfused=_optional_int(data.get("kernels_unfused")),
            kernels=_optional_int(data.get("kernels")),
        )


def _optional_int(value) -> int | None:
    return None if value is None else int(value)
