"""The partition report: for every op, where it runs and why; readable as a table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kiln.partition.blocks import NodeRow
from kiln.report.build_time import build_time_line
from kiln.report.quantization import quantization_table
from kiln.report.sparsity import sparsity_table
from kiln.report.table import format_table


@dataclass
class PartitionReport:
    rows: list[NodeRow]
    blocks: dict[str, int] = field(default_factory=dict)  # engine block name -> op count
    # engine block name -> [(layer name, kind, tactic, source, ms)] once built
    layers: dict[str, list[tuple]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    # sparse_weights=True: engine block name -> rows of kiln.report.sparsity.sparsity_rows
    sparsity: dict[str, list[tuple]] = field(default_factory=dict)
    # Things the user should know that are not errors (e.g. sparse_weights=True found no 2:4 layer).
    warnings: list[str] = field(default_factory=list)
    # INT8/FP8: engine block name -> kiln.report.quantization.quantization_record
    quantization: dict[str, dict] = field(default_factory=dict)
    # engine block name -> [plan steps, kernels per forward before fusion, after] (optimize/kernel_count.py)
    kernels: dict[str, list] = field(default_factory=dict)
    # Seconds the build spent per stage (capture, lowering, ..., precompile, timing), "other" and "total" (report/build_time.py)
    build_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def engine_ops(self) -> int:
        return sum(1 for r in self.rows if r.where == "engine")

    @property
    def pytorch_ops(self) -> int:
        return sum(1 for r in self.rows if r.where == "pytorch")

    @property
    def fallback(self) -> list[NodeRow]:
        return [r for r in self.rows if r.where == "pytorch"]

    def fallback_reasons(self) -> Counter:
        return Counter(f"{r.op}: {r.reason}" for r in self.fallback)

    def record_kernels(self, block: str, plan) -> None:
        self.kernels[block] = [len(plan.steps), plan.kernels_unfused, plan.kernels]

    def kernels_per_forward(self) -> tuple[int, int] | None:
        """Kernels per forward pass over all engine blocks, (before fusion, after); None if a block was not counted."""
        counts = list(self.kernels.values())
        if not counts or any(c[1] is None or c[2] is None for c in counts):
            return None
        return sum(c[1] for c in counts), sum(c[2] for c in counts)

    def summary(self) -> str:
        total = len(self.rows)
        pct = 100.0 * self.engine_ops / total if total else 0.0
        text = (
            f"{self.engine_ops} of {total} ops ({pct:.0f}%) run on the Kiln engine in {len(self.blocks)} block(s); "
            f"{self.pytorch_ops} run in PyTorch."
        )
        kernels = self.kernels_per_forward()
        if kernels is not None:
            text += f" Engine kernels per forward: {kernels[0]} before fusion -> {kernels[1]} after."
        return text

    def kernels_line(self, block: str) -> str:
        steps, before, after = self.kernels[block]
        if before is None or after is None:
            return f"{block}: {steps} layers (kernels per forward not counted: built by an older Kiln)"
        return f"{block}: {steps} layers after fusion (kernels per forward: {before} -> {after}; views launch none)"

    def build_time(self) -> str:
        """Where this build's seconds went, by stage (kept out of table(): a cached engine's report is the one it was built with)."""
        return build_time_line(self.build_seconds) if self.build_seconds else "Build time: not recorded (built by an older Kiln)"

    def table(self) -> str:
        body = format_table(
            ["node", "op", "runs on", "block", "why not engine"], [[r.node, r.op, r.where, r.block, r.reason] for r in self.rows]
        )
        parts = ["Kiln partition report", self.summary()]
        if self.inputs:
            parts.append("Inputs: " + ", ".join(self.inputs))
        parts.append(body)
        if self.fallback:
            parts.append("PyTorch fallback, by reason:")
            parts.append(format_table(["op: reason", "count"], [[k, v] for k, v in self.fallback_reasons().most_common()]))
        for block, layers in self.layers.items():
            parts.append(f"{block}: layers and tactics")
            if block in self.kernels:
                parts.append(self.kernels_line(block))
            parts.append(format_table(["layer", "kind", "tactic", "from", "ms"], [list(row) for row in layers]))
        if self.sparsity:
            parts.append(sparsity_table(self.sparsity))
        if self.quantization:
            parts.append(quantization_table(self.quantization))
        parts += [f"warning: {w}" for w in self.warnings]
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.table()

    def to_json(self) -> dict:
        return {
            "rows": [[r.node, r.op, r.where, r.reason, r.block] for r in self.rows],
            "blocks": self.blocks,
            "layers": {k: [list(x) for x in v] for k, v in self.layers.items()},
            "inputs": self.inputs,
            "sparsity": {k: [list(x) for x in v] for k, v in self.sparsity.items()},
            "warnings": self.warnings,
            "quantization": self.quantization,
            "kernels": self.kernels,
            "build_seconds": self.build_seconds,
        }

    @classmethod
    def from_json(cls, data: dict) -> PartitionReport:
        rows = [NodeRow(node=r[0], op=r[1], where=r[2], reason=r[3], block=r[4]) for r in data["rows"]]
        layers = {k: [tuple(x) for x in v] for k, v in data.get("layers", {}).items()}
        report = cls(rows, dict(data.get("blocks", {})), layers, list(data.get("inputs", [])))
        report.sparsity = {k: [tuple(x) for x in v] for k, v in data.get("sparsity", {}).items()}
        report.warnings = [str(w) for w in data.get("warnings", [])]
        report.quantization = dict(data.get("quantization", {}))
        report.kernels = {k: list(v) for k, v in data.get("kernels", {}).items()}
        report.build_seconds = {str(k): float(v) for k, v in data.get("build_seconds", {}).items()}
        return report
