"""Which of a model's GEMM layers can run on the sparse tensor cores, and why the others cannot."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kiln.report.table import format_table
from kiln.sparsity.pattern import KEPT, _groups, as_reduction_matrix, kernel_shape_problem
from kiln.sparsity.prune import is_prunable


@dataclass
class LayerSparsity:
    name: str
    kind: str
    shape: tuple[int, ...]
    is_2to4: bool
    # Fraction of the weight's groups of four with more than two non-zeros (0.0 when 2:4).
    dense_groups: float
    # None when the layer can run sparse; else what stops it.
    reason: str | None

    @property
    def qualifies(self) -> bool:
        return self.reason is None


@dataclass
class SparsitySummary:
    rows: list[LayerSparsity] = field(default_factory=list)
    dtype: torch.dtype = torch.float16

    @property
    def qualifying(self) -> list[str]:
        return [r.name for r in self.rows if r.qualifies]

    def table(self) -> str:
        head = (
            f"2:4 sparsity: {len(self.qualifying)} of {len(self.rows)} linear / 1x1-conv layers can run on sparse "
            f"tensor cores in {str(self.dtype).removeprefix('torch.')}"
        )
        body = format_table(
            ["layer", "kind", "weight", "2:4", "sparse kernel", "why not"],
            [
                [r.name, r.kind, "x".join(map(str, r.shape)), "yes" if r.is_2to4 else f"no ({100 * r.dense_groups:.0f}% groups dense)",
                 "yes" if r.qualifies else "no", r.reason or ""]
                for r in self.rows
            ],
        )  # fmt: skip
        return f"{head}\n{body}"

    def __str__(self) -> str:
        return self.table()


def weight_report(weight: torch.Tensor, dtype: torch.dtype) -> tuple[bool, float, str | None]:
    """(is 2:4, fraction of dense groups, why it cannot run sparse or None) of a [out, in] or [Cout, Cin, 1, 1] weight."""
    matrix = as_reduction_matrix(weight.detach())
    over = (_groups(matrix) != 0).sum(-1) > KEPT
    dense_groups = over.float().mean().item() if over.numel() else 1.0
    pattern = over.numel() > 0 and dense_groups == 0.0
    reason = kernel_shape_problem(matrix.shape[0], matrix.shape[1], dtype)
    if not pattern:
        reason = "weight is not 2:4 (prune it with kiln.sparsity.prune_2to4)" + (f"; also {reason}" if reason else "")
    return pattern, dense_groups, reason


@torch.no_grad()
def sparsity_summary(model: nn.Module, dtype: torch.dtype = torch.float16) -> SparsitySummary:
    """One row per linear / pointwise-conv layer: its 2:4 pattern, and whether kiln.compile(sparse_weights=True) can use it.

    `dtype` is the precision the model will be compiled in (FP16 and BF16 have sparse kernels).
    """
    summary = SparsitySummary(dtype=dtype)
    for name, module in model.named_modules():
        if not is_prunable(module):
            continue
        pattern, dense_groups, reason = weight_report(module.weight, dtype)
        kind = "linear" if isinstance(module, nn.Linear) else "conv1x1"
        if kind == "conv1x1" and (tuple(module.stride) != (1, 1) or module.padding not in ((0, 0), "valid")):
            # Kiln takes a 1x1 conv as a GEMM only at stride 1 without padding; others stay convolutions.
            why = f"1x1 conv with stride {tuple(module.stride)}, padding {module.padding}: runs as a convolution, not a GEMM"
            reason = why if reason is None else f"{why}; also {reason}"
        summary.rows.append(LayerSparsity(name, kind, tuple(module.weight.shape), pattern, dense_groups, reason))
    return summary
