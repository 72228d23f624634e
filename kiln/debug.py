"""kiln.debug.compare: where does the accuracy go? Each engine layer's output against an FP32 build.

The model is compiled again in FP32 (same device, every op on the engine where possible), both
are run on the same inputs, and every tensor the two engines share by name (conversion names
tensors after the model's graph nodes, and quantization keeps those names) is compared. The
error of a layer's output is its relative L2 error against the FP32 value, so it includes the
drift of everything before it: the first layers where it jumps are where accuracy is lost. An
8-bit tensor is dequantized with its producer's scale before the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kiln.engine.kernels  # noqa: F401  (registers every tactic)
from kiln.engine.kernels.registry import RunContext, get_tactic
from kiln.engine.module import EngineModule
from kiln.report.table import format_table


@dataclass
class LayerError:
    block: str
    layer: str
    kind: str
    precision: str
    tensor: str
    error: float  # relative L2 error of the layer's output against the FP32 build

    def row(self) -> list:
        return [self.block, self.layer, self.kind, self.precision, self.tensor, f"{self.error:.3e}"]


def compare(compiled, model: torch.nn.Module, inputs, *, show: bool = True, top: int | None = None, **compile_kwargs) -> list[LayerError]:
    """Per-layer error of `compiled` against an FP32 compile of `model` on `inputs`, worst first (printed unless show=False)."""
    import kiln

    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    compile_kwargs.setdefault("min_block_size", 1)
    reference = kiln.compile(model, inputs, enabled_precisions={torch.float32}, device=compiled.device, **compile_kwargs)
    ours = _tensors_by_block(compiled, inputs)
    theirs = _tensors_by_block(reference, inputs)
    rows = []
    for block, (plan, values) in ours.items():
        if block not in theirs:
            continue
        ref_values = theirs[block][1]
        for step in plan.steps:
            layer = step.layer
            for name in layer.outputs:
                if name in values and name in ref_values and ref_values[name].dtype.is_floating_point:
                    value = _as_float(values[name], layer)
                    if value is None or value.shape != ref_values[name].shape:
                        continue
                    precision = layer.attrs.get("qdtype") or layer.precision or str(values[name].dtype).removeprefix("torch.")
                    rows.append(LayerError(block, layer.name, layer.kind, precision, name, _relative(value, ref_values[name])))
    rows.sort(key=lambda r: r.error, reverse=True)
    if show:
        shown = rows[:top] if top else rows
        print(format_table(["block", "layer", "kind", "precision", "output", "rel. error vs FP32"], [r.row() for r in shown]))
    return rows


def _tensors_by_block(compiled, inputs) -> dict:
    """Every engine block's plan and the value of each tensor it made, on these inputs."""
    engines = {name: m for name, m in compiled.graph_module.named_children() if isinstance(m, EngineModule)}
    captured: dict[str, list] = {}

    def record(name: str):
        def hook(module, args) -> None:  # returns None: the call goes on with its own arguments
            captured.setdefault(name, list(args))

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in engines.items()]
    try:
        with torch.no_grad():
            compiled(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (engines[name].plan, _run_plan(engines[name].plan, args)) for name, args in captured.items()}


def _run_plan(plan, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    values = dict(plan.weights)
    values.update(zip(plan.inputs, inputs))
    symbols = {name: inputs[s.sources[0][0]].shape[s.sources[0][1]] for name, s in plan.symbols.items() if s.sources}
    run = RunContext(symbols)
    made = {}
    with torch.no_grad():
        for step in plan.steps:
            fn = get_tactic(step.layer.kind, step.tactic).fn
            result = fn(step.layer, [values[n] if n is not None else None for n in step.layer.inputs], run)
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            for name, value in zip(step.layer.outputs, results):
                values[name] = made[name] = value
    return made


def _as_float(value: torch.Tensor, layer) -> torch.Tensor | None:
    if value.dtype.is_floating_point and value.dtype != torch.float8_e4m3fn:
        return value.float()
    scale = layer.attrs.get("out_scale", layer.attrs.get("scale"))
    if scale is None:
        return None
    zero_point = layer.attrs.get("out_zero_point", layer.attrs.get("zero_point", 0))
    return (value.float() - zero_point) * scale


def _relative(value: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (value.double() - ref.double()).norm().item()
    norm = ref.double().norm().item()
    return diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))
