"""Run a Network layer by layer with its reference tactics: calibration, the accuracy guard and kiln.debug use it."""

from __future__ import annotations

from collections.abc import Callable

import torch

import kiln.engine.kernels  # noqa: F401  (registers every tactic)
from kiln.engine.ir.network import Network
from kiln.engine.kernels.registry import REFERENCE, RunContext, get_tactic

# What `float_dtype` widens: the 16-bit compute types, never an FP8 value that simulates an FP8 layer.
WIDENED = (torch.float16, torch.bfloat16)

# observe(tensor name, value) sees every network input and every layer output.
Observer = Callable[[str, torch.Tensor], None]


def run_network(
    network: Network,
    inputs: list[torch.Tensor],
    constants: dict[str, torch.Tensor],
    observe: Observer | None = None,
    float_dtype: torch.dtype | None = None,
):
    """The network's outputs on `inputs`; `constants` are network.constants already on the inputs' device.

    With `float_dtype`, every 16-bit float a layer makes is held in that dtype: a half model's casts
    (BERT's `mask.to(x.dtype)`) would otherwise bring FP16 back into the FP32 yardstick run, and
    attention refuses a half mask beside float queries."""
    values: dict[str, torch.Tensor] = dict(constants)
    for name, value in zip(network.inputs, inputs):
        values[name] = value
        if observe is not None:
            observe(name, value)
    symbols = {name: inputs[s.sources[0][0]].shape[s.sources[0][1]] for name, s in network.symbols.items() if s.sources}
    run = RunContext(symbols)
    last_use: dict[str, int] = {}
    for i, layer in enumerate(network.layers):
        for n in layer.inputs:
            if n is not None:
                last_use[n] = i
    keep = set(network.outputs) | set(constants)
    with torch.no_grad():
        for i, layer in enumerate(network.layers):
            fn = get_tactic(layer.kind, REFERENCE).fn
            result = fn(layer, [values[n] if n is not None else None for n in layer.inputs], run)
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            if float_dtype is not None:
                results = [r.to(float_dtype) if isinstance(r, torch.Tensor) and r.dtype in WIDENED else r for r in results]
            for name, value in zip(layer.outputs, results):
                values[name] = value
                if observe is not None:
                    observe(name, value)
            for n in layer.inputs:
                if n is not None and last_use.get(n) == i and n not in keep:
                    values.pop(n, None)
    return [values[n] for n in network.outputs]


def constants_on(network: Network, device: torch.device, float_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The network's constants on `device`; with `float_dtype`, its floating-point ones in that dtype too."""

    def moved(value: torch.Tensor) -> torch.Tensor:
        if float_dtype is not None and value.is_floating_point():
            return value.to(device, float_dtype)
        return value.to(device)

    return {name: moved(value) for name, value in network.constants.items()}


def floats_as(batch: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    return [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in batch]


def relative_error(outputs: list[list[torch.Tensor]], references: list[list[torch.Tensor]]) -> float:
    """sqrt(sum |out - ref|^2 / sum |ref|^2) over every float output of every batch."""
    num = den = 0.0
    for outs, refs in zip(outputs, references):
        for o, r in zip(outs, refs):
            if not r.dtype.is_floating_point:
                continue
            diff = o.double() - r.double()
            num += float((diff * diff).sum())
            den += float((r.double() * r.double()).sum())
    return (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))
