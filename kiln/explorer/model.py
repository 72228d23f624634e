"""What the engine explorer and `kiln inspect` show, gathered from a CompiledModule as plain JSON data."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.plan import Plan
from kiln.settings import op_name


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensor_json(plan: Plan, name: str | None) -> dict | None:
    if name is None:
        return None
    desc = plan.tensors.get(name)
    if desc is None:
        return {"name": name}
    placed = plan.arena.offsets.get(name) if plan.arena is not None else None
    return {
        "name": name,
        "shape": [str(d) for d in desc.shape],
        "dtype": dtype_name(desc.dtype),
        "layout": desc.layout,
        "role": desc.role,
        "arena": list(placed) if placed else None,
    }


def block_json(name: str, plan: Plan) -> dict:
    layers = []
    for i, step in enumerate(plan.steps):
        layer = step.layer
        # Fusion passes join the sources of the layers they merge with " + " (optimize/fuse_conv.py).
        sources = [s.strip() for s in layer.source.split(" + ") if s.strip()]
        layers.append(
            {
                "index": i,
                "name": layer.name,
                "kind": layer.kind,
                "tactic": step.tactic,
                "ms": step.timings.get(step.tactic),
                "candidates": dict(sorted(step.timings.items(), key=lambda kv: kv[1])),
                "precision": layer.precision or "",
                "source": layer.source,
                "fused": len(sources) > 1,
                "inputs": [_tensor_json(plan, n) for n in layer.inputs],
                "outputs": [_tensor_json(plan, n) for n in layer.outputs],
                "attrs": {k: v for k, v in layer.attrs.items() if isinstance(v, (int, float, str, bool, list)) and len(str(v)) < 80},
            }
        )
    arena = plan.arena
    return {
        "name": name,
        "device": plan.device,
        "compute_dtype": dtype_name(plan.compute_dtype),
        "inputs": [_tensor_json(plan, n) for n in plan.inputs],
        "outputs": [_tensor_json(plan, n) for n in plan.outputs],
        "layers": layers,
        "kept_fp32": plan.kept_fp32,
        "symbols": [s.to_json() for s in plan.symbols.values()],
        "memory": {
            "arena_bytes": arena.size if arena else 0,
            "peak_live_bytes": arena.peak_live if arena else 0,
            "unshared_bytes": arena.total_unshared if arena else 0,
            "weight_bytes": sum(_bytes(w) for w in plan.weights.values()),
            "weights": len(plan.weights),
        },
    }


def top_graph_json(compiled) -> list[dict]:
    """The compiled module's own FX graph: inputs, engine blocks, PyTorch ops (with the report's reason), outputs."""
    reasons = {r.node: r.reason for r in compiled.report.rows}
    engines = set(compiled.engine_blocks)
    nodes = []
    for node in compiled.graph_module.graph.nodes:
        if node.op == "call_function" and node.target is operator.getitem:
            kind, label = "getitem", f"[{node.args[1]}]"
        elif node.op == "call_module" and node.target in engines:
            kind, label = "engine", node.target
        elif node.op == "call_function":
            kind, label = "pytorch", op_name(node.target)
        else:
            kind, label = node.op, node.name
        nodes.append(
            {
                "name": node.name,
                "kind": kind,
                "label": label,
                "reason": reasons.get(node.name, ""),
                "args": [a.name for a in node.all_input_nodes],
            }
        )
    return nodes


def explorer_data(compiled, title: str = "") -> dict:
    import kiln

    report = compiled.report
    return {
        "title": title,
        "kiln_version": kiln.__version__,
        "torch_version": torch.__version__,
        "device": str(compiled.device),
        "inputs": [s.describe() for s in compiled.input_specs],
        "summary": report.summary(),
        "graph": top_graph_json(compiled),
        "blocks": [block_json(name, engine.plan) for name, engine in compiled.engine_blocks.items()],
        "partition": [{"node": r.node, "op": r.op, "where": r.where, "block": r.block, "reason": r.reason} for r in report.rows],
        "fallback_reasons": dict(report.fallback_reasons().most_common()),
    }


@dataclass
class EngineSummary:
    data: dict

    def lines(self) -> list[str]:
        d = self.data
        out = [f"inputs: {', '.join(d['inputs'])}", d["summary"]]
        for block in d["blocks"]:
            mem = block["memory"]
            tactics: dict[str, int] = {}
            for layer in block["layers"]:
                tactics[layer["tactic"]] = tactics.get(layer["tactic"], 0) + 1
            shown = ", ".join(f"{k} x{v}" for k, v in sorted(tactics.items(), key=lambda kv: -kv[1]))
            out.append(
                f"{block['name']}: {len(block['layers'])} layers on {block['device']} in {block['compute_dtype']}; "
                f"arena {mem['arena_bytes'] / 2**20:.2f} MiB, weights {mem['weight_bytes'] / 2**20:.2f} MiB ({mem['weights']} tensors); "
                f"tactics: {shown}"
            )
        return out


def engine_summary(compiled) -> EngineSummary:
    return EngineSummary(explorer_data(compiled))
