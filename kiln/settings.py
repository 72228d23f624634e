"""The one settings object that travels down the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kiln.errors import KilnError

SUPPORTED_PRECISIONS = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class CompileSettings:
    """What `kiln.compile` was asked to do. Built once from its arguments; no stage reads loose kwargs."""

    enabled_precisions: frozenset = frozenset({torch.float32})
    min_block_size: int = 5
    torch_executed_ops: frozenset = frozenset()
    require_full_compilation: bool = False
    truncate_double: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    debug: bool = False
    dryrun: bool = False
    # Tactic timing: on CUDA the builder times every applicable tactic and keeps the fastest.
    timing_cache_path: str | None = None
    # Per distinct input shape one CUDA graph is recorded; the oldest is dropped past this many.
    max_cuda_graphs: int = 16
    cuda_graphs: bool = True
    # cuDNN searches its algorithms again when a graph is recorded for an input shape other than
    # the one the tactics were timed at: steadier speed there, but a first call of 100s of ms.
    tune_new_shapes: bool = False
    # Offer a 2:4 sparse tactic (cuSPARSELt) for every GEMM-like layer whose constant weight has
    # the 2:4 pattern (docs/sparsity.md); the builder keeps it only where it times faster.
    sparse_weights: bool = False
    # CUDA streams that may run one engine at the same time, each in its own set of buffers
    # (arena, graph pool, graphs); further streams share them and wait for each other.
    max_execution_contexts: int = 4

    def __post_init__(self) -> None:
        bad = [p for p in self.enabled_precisions if p not in SUPPORTED_PRECISIONS]
        if bad:
            raise KilnError(
                f"enabled_precisions contains {bad}; Kiln supports {list(SUPPORTED_PRECISIONS)} (INT8/FP8 are not available yet)."
            )
        if self.min_block_size < 1:
            raise KilnError(f"min_block_size must be >= 1, got {self.min_block_size}.")

    @property
    def compute_dtype(self) -> torch.dtype:
        """The lowest precision the user allowed: layers run in it unless kept wider for accuracy."""
        if torch.float16 in self.enabled_precisions:
            return torch.float16
        if torch.bfloat16 in self.enabled_precisions:
            return torch.bfloat16
        return torch.float32


def op_name(target: object) -> str:
    """The name a user writes in torch_executed_ops: 'aten.relu.default' (overload) or 'aten.relu' (packet)."""
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(target)
    return getattr(target, "__name__", str(target))


def normalize_executed_ops(ops) -> frozenset:
    """torch_executed_ops accepts OpOverloads, OpOverloadPackets or strings; store canonical names."""
    names = set()
    for op in ops or ():
        if isinstance(op, str):
            name = op.replace("torch.ops.", "").replace("::", ".")
            names.add(name)
        elif isinstance(op, torch._ops.OpOverloadPacket):
            names.add(op._qualified_op_name.replace("::", "."))
        else:
            names.add(op_name(op))
    return frozenset(names)


def is_executed_in_torch(target: object, settings: CompileSettings) -> bool:
    name = op_name(target)
    packet = name.rsplit(".", 1)[0]
    return name in settings.torch_executed_ops or packet in settings.torch_executed_ops
