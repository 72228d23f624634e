"""kiln.explain(model, *args): where torch.compile breaks the model into graphs, and what Kiln makes of each."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln.dynamo.backend import GraphRecord, KilnBackend


@dataclass
class Explanation:
    graph_count: int
    graph_break_count: int
    # (reason, "file:line in function" of the user's code) per break, as torch._dynamo.explain found them.
    breaks: list[tuple[str, str]]
    graphs: list[GraphRecord]

    def table(self) -> str:
        lines = [f"torch.compile(backend='kiln'): {self.graph_count} graph(s), {self.graph_break_count} graph break(s)."]
        for i, (reason, where) in enumerate(self.breaks, 1):
            lines.append(f"  break {i}: {reason}" + (f"\n           at {where}" if where else ""))
        for record in self.graphs:
            lines.append("")
            lines.append(record.summary())
            if record.symbols:
                lines.append("Dynamic sizes: " + "; ".join(record.symbols))
            if record.report is not None:
                lines.append(record.report.table())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def explain(model, *args, options: dict | None = None, **kwargs) -> Explanation:
    """Run `model(*args, **kwargs)` under torch._dynamo.explain and under a dry-run Kiln backend.

    Like torch._dynamo.explain, this resets dynamo's caches (compiled graphs of every model).
    """
    found = torch._dynamo.explain(model)(*args, **kwargs)
    breaks = [(r.reason, _where(r.user_stack)) for r in found.break_reasons]
    backend = KilnBackend(**{**(options or {}), "dryrun": True})
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.compile(model, backend=backend)(*args, **kwargs)
        graphs = list(backend.records)
    finally:
        torch._dynamo.reset()
    return Explanation(found.graph_count, found.graph_break_count, breaks, graphs)


def _where(stack) -> str:
    if not stack:
        return ""
    frame = stack[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}" + (f" ({frame.line.strip()})" if frame.line else "")
