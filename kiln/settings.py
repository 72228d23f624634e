"""The one settings object that travels down the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kiln.errors import KilnError

SUPPORTED_PRECISIONS = (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.float8_e4m3fn)
# Quantized precisions: conv/linear/matmul layers run on 8-bit inputs (kiln/quantize, docs/quantization.md).
QUANTIZED_PRECISIONS = {torch.int8: "int8", torch.float8_e4m3fn: "fp8"}
# FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards.
FP8_MIN_CAPABILITY = (8, 9)


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
    # INT8/FP8 post-training quantization: a kiln.ptq calibrator (DataLoaderCalibrator, CacheCalibrator).
    calibrator: object = None
    # Largest relative L2 error of an engine block's outputs vs FP32, on the calibration batches, that
    # quantization may cost; the most harmful quantized layers are kept in FP16/FP32 until it holds.
    int8_error_budget: float = 0.05
    # Engine cache (kiln/engine_cache.py): a compile of the same graph, weights, inputs, settings,
    # device and versions loads the engine built before. Directory: cache_dir, else $KILN_CACHE_DIR,
    # else ~/.cache/kiln/engines; least recently used entries go past cache_size_limit bytes.
    engine_cache: bool = False
    # Look the cache up by a key of the module itself (classes, their source files, attributes, weights)
    # before capturing, so a warm compile runs no torch.export. False: key by the captured graph only,
    # for a forward that reads state outside the module (globals set at run time, environment variables).
    cache_by_module: bool = True
    cache_dir: str | None = None
    cache_size_limit: int = 8 << 30

    def __post_init__(self) -> None:
        bad = [p for p in self.enabled_precisions if p not in SUPPORTED_PRECISIONS]
        if bad:
            raise KilnError(f"enabled_precisions contains {bad}; Kiln supports {list(SUPPORTED_PRECISIONS)}.")
        if self.min_block_size < 1:
            raise KilnError(f"min_block_size must be >= 1, got {self.min_block_size}.")
        if self.int8_error_budget <= 0:
            raise KilnError(f"int8_error_budget must be > 0 (a relative error such as 0.05), got {self.int8_error_budget}.")
        if torch.float8_e4m3fn in self.enabled_precisions and self.device.type == "cuda":
            capability = torch.cuda.get_device_capability(self.device)
            if capability < FP8_MIN_CAPABILITY:
                raise KilnError(
                    f"enabled_precisions asks for FP8 (torch.float8_e4m3fn), but {torch.cuda.get_device_name(self.device)} has "
                    f"compute capability {capability[0]}.{capability[1]}; FP8 needs 8.9 or newer (Ada, Hopper). "
                    "Use torch.int8 instead, or compile on the CPU to simulate FP8."
                )

    @property
    def compute_dtype(self) -> torch.dtype:
        """The lowest precision the user allowed: layers run in it unless kept wider for accuracy."""
        if torch.float16 in self.enabled_precisions:
            return torch.float16
        if torch.bfloat16 in self.enabled_precisions:
            return torch.bfloat16
        return torch.float32

    @property
    def quantized_dtype(self) -> str | None:
        """"int8" or "fp8" when conv/linear/matmul layers may run quantized (INT8 wins when both are enabled), else None."""
        for dtype, name in QUANTIZED_PRECISIONS.items():
            if dtype in self.enabled_precisions:
                return name
        return None


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
