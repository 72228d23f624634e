"""Report rows for INT8/FP8: per conv/linear/matmul layer, the precision it runs in and why."""

from __future__ import annotations

from kiln.report.table import format_table

QUANTIZATION_ATTR = "quantization"
HEADERS = ["layer", "kind", "precision", "tactic", "why"]


def quantization_record(steps, summary: dict | None) -> dict | None:
    """What the report keeps for one built block: the quantization pass's summary and one row per layer it looked at."""
    rows = []
    for step in steps:
        why = step.layer.attrs.get(QUANTIZATION_ATTR)
        if why is None:
            continue
        precision, _, reason = why.partition(": ")
        rows.append([step.layer.name, step.layer.kind, precision, step.tactic, reason])
    if not rows and summary is None:
        return None
    return {"summary": dict(summary or {}), "rows": rows}


def quantization_table(records: dict[str, dict]) -> str:
    parts = []
    for block, record in records.items():
        s = record["summary"]
        rows = record["rows"]
        low = sum(1 for r in rows if not r[2].startswith("kept"))
        line = f"{block}: {low} of {len(rows)} conv/linear/matmul layers in {s.get('qdtype', '8 bits')}, scales from {s.get('source')}"
        if s.get("error") is not None:
            line += (
                f"; output error vs FP32 {s['error']:.4f} (budget {s['budget']}, {s['error_all_quantized']:.4f} with every layer quantized)"
            )
        if s.get("residuals") is not None:
            line += f"; residual adds read {s['residuals']}"
        parts.append(line)
        parts.append(format_table(HEADERS, rows))
    return "\n".join(parts)
