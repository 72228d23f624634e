"""Report rows for sparse_weights=True: per GEMM-like layer, 2:4 or not, sparse or dense, each candidate's time."""

from __future__ import annotations

from kiln.report.table import format_table

SPARSE_ATTR = "sparse_2to4"
# A sparse_mlp layer (optimize/fuse_sparse_mlp.py) carries its two linears' marks here instead: one row for the pair.
CHAIN_ATTR = "sparse_2to4_chain"
CHAIN_TACTIC = "cusparselt_2to4_chain"
SPARSE_TACTICS = frozenset({"cusparselt_2to4", "cutlass_2to4", CHAIN_TACTIC})
HEADERS = ["layer", "kind", "weight", "2:4", "chosen", "tactic", "candidates (ms)", "why"]
NO_2TO4_WARNING = (
    "sparse_weights=True, but no linear / matmul / 1x1-conv layer has a 2:4 weight, so every layer runs dense. "
    "Prune the model with kiln.sparsity.prune_2to4 first (kiln.sparsity.sparsity_summary(model) shows each layer)."
)


def sparsity_rows(steps) -> list[tuple]:
    """One row per plan step the sparse_weights pass looked at (its attrs carry sparse_2to4)."""
    rows = []
    for step in steps:
        chain = step.layer.attrs.get(CHAIN_ATTR)
        info = step.layer.attrs.get(SPARSE_ATTR)
        if info is None and chain is None:
            continue
        sparse = step.tactic in SPARSE_TACTICS
        candidates = ", ".join(f"{name} {ms:.4f}" for name, ms in sorted(step.timings.items(), key=lambda kv: kv[1]))
        if chain is not None:
            weight = " + ".join(f"{i['rows']}x{i['cols']}" for i in chain)
            why = _why_chain(chain, step, sparse)
        else:
            weight, why = f"{info['rows']}x{info['cols']}", _why(info, step, sparse)
        pattern = all(i["pattern"] for i in chain) if chain is not None else info["pattern"]
        rows.append(
            (step.layer.name, step.layer.kind, weight, "yes" if pattern else "no",
             "sparse" if sparse else "dense", step.tactic, candidates, why)
        )  # fmt: skip
    return rows


def _why_chain(chain: list[dict], step, sparse: bool) -> str:
    if sparse:
        algs = ", ".join(str(i.get("alg_id", 0)) for i in chain)
        return f"fastest (cuSPARSELt algs {algs}; the hidden activation kept transposed)"
    if not step.timings:
        return "nothing timed (not a CUDA build): the reference computes it dense"
    if CHAIN_TACTIC not in step.timings:
        return "sparse chain not offered here (needs compute capability >= 8.0, cuSPARSELt and Triton) or it failed at this shape"
    return "dense was faster at this shape"


def _why(info: dict, step, sparse: bool) -> str:
    if info.get("reason"):
        return info["reason"]
    if sparse:
        return f"fastest (cuSPARSELt alg {info.get('alg_id', 0)})" if step.tactic == "cusparselt_2to4" else "fastest"
    if not step.timings:
        return "nothing timed (not a CUDA build): the reference computes it dense"
    if not any(name in SPARSE_TACTICS for name in step.timings):
        return "sparse tactic not offered here (needs compute capability >= 8.0 and cuSPARSELt) or it failed at this shape"
    return "dense was faster at this shape"


def has_2to4(rows_by_block: dict[str, list[tuple]]) -> bool:
    return any(row[3] == "yes" for rows in rows_by_block.values() for row in rows)


def sparsity_table(rows_by_block: dict[str, list[tuple]]) -> str:
    parts = []
    for block, rows in rows_by_block.items():
        taken = sum(1 for r in rows if r[4] == "sparse")
        parts.append(f"{block}: 2:4 sparsity, {taken} of {len(rows)} GEMM-like layers sparse")
        parts.append(format_table(HEADERS, [list(r) for r in rows]))
    return "\n".join(parts)


def record_sparsity(report, block: str | None, steps=None) -> None:
    """Add a built block's rows to `report`; with block=None (after the last block), warn if no layer was 2:4."""
    if block is not None:
        report.sparsity[block] = sparsity_rows(steps)
    elif not has_2to4(report.sparsity) and NO_2TO4_WARNING not in report.warnings:
        import warnings

        report.warnings.append(NO_2TO4_WARNING)
        warnings.warn(f"kiln: {NO_2TO4_WARNING}", stacklevel=4)
