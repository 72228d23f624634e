"""Precision assignment: with enabled_precisions={half} or {bfloat16}, float layers compute in that type.

- Every float layer computes in the compute dtype, except those an FP32 rule keeps wide
  (FP32_RULES below); the layer's `precision` says which, and `attrs["fp32_reason"]` why.
- Float weights are stored once in the dtype of the layers that read them (cast here, at
  build time); values beyond the compute dtype's range are clamped to its largest finite
  value (an additive mask of -1e9 becomes -65504, which softmax treats the same) instead of
  turning into inf.
- The network boundary keeps the user's dtypes: a `cast` layer after each FP32 input and
  before each FP32 output. Casts are inserted wherever a layer reads a tensor of another
  float dtype, and shared between readers.
- Accumulation: PyTorch's CUDA kernels for softmax, layer/group norm, mean/sum and GEMMs
  accumulate FP16/BF16 inputs in FP32 already (tests/gpu/test_precision.py checks the ones
  the engine uses), so those layers run in the compute dtype; only results that can leave
  the FP16 range are kept in FP32.

Layers with a `dtype` attribute (sum(dtype=...), explicit creation dtypes) keep the dtype the
model asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.tensor import TensorDesc
from kiln.engine.optimize import OptimizeContext, optimize_pass

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# Left in the dtype conversion gave them: casts say their own dtype, and an FP16 arange would
# lose integers above 2048.
AS_CONVERTED = frozenset({"cast", "arange"})

# A rule returns why a layer must stay in FP32 under the given compute dtype, or None.
Fp32Rule = Callable[[Layer, Network, torch.dtype], str | None]
FP32_RULES: list[Fp32Rule] = []


def fp32_rule(fn: Fp32Rule) -> Fp32Rule:
    FP32_RULES.append(fn)
    return fn


@fp32_rule
def growing_reductions(layer: Layer, network: Network, dtype: torch.dtype) -> str | None:
    # aten accumulates in FP32 but writes the result in FP16: a sum, product or norm grows
    # with the number of elements and overflows past 65504 (e.g. 16k activations of ~4).
    # mean/amax/amin/argmax stay within the input's range. BF16 has FP32's range.
    if dtype == torch.float16 and layer.kind == "reduce" and layer.attrs.get("op") in ("sum", "prod", "norm", "var"):
        return f"reduce {layer.attrs['op']}: result grows with the element count and can exceed the FP16 range"
    return None


@fp32_rule
def exponentials(layer: Layer, network: Network, dtype: torch.dtype) -> str | None:
    # exp overflows FP16 for inputs above 11.1, pow for modest bases and exponents; softmax is
    # not here: its kernel subtracts the max and accumulates in FP32.
    if dtype != torch.float16:
        return None
    if layer.kind == "unary" and layer.attrs.get("op") in ("exp", "expm1"):
        return f"unary {layer.attrs['op']}: overflows FP16 for inputs above 11"
    if layer.kind == "binary" and layer.attrs.get("op") == "pow":
        return "pow: overflows FP16 for moderate bases and exponents"
    return None


def keep_fp32_reason(layer: Layer, network: Network, dtype: torch.dtype) -> str | None:
    for rule in FP32_RULES:
        reason = rule(layer, network, dtype)
        if reason:
            return reason
    return None


@optimize_pass
def assign_precision(network: Network, ctx: OptimizeContext) -> Network:
    low = ctx.settings.compute_dtype
    if low == torch.float32:
        return network
    wide = {layer.name: r for layer in network.layers if (r := keep_fp32_reason(layer, network, low))}
    precision = {layer.name: _layer_dtype(layer, network, low, wide) for layer in network.layers}
    _cast_constants(network, precision, low)

    original_outputs = {name: network.tensors[name].dtype for name in network.outputs}
    casts: dict[tuple[str, torch.dtype], str] = {}
    layers: list[Layer] = []

    def as_dtype(name: str, dtype: torch.dtype) -> str:
        desc = network.tensors[name]
        if desc.dtype == dtype or desc.dtype not in FLOATS:
            return name
        key = (name, dtype)
        if key not in casts:
            layer, out = _new_cast(network, desc, dtype)
            layers.append(layer)
            casts[key] = out.name
        return casts[key]

    for layer in network.layers:
        dtype = precision[layer.name]
        if dtype is not None:
            layer.inputs = [as_dtype(n, dtype) if n is not None else None for n in layer.inputs]
            for out in layer.outputs:
                if network.tensors[out].dtype in FLOATS:
                    network.tensors[out].dtype = dtype
            layer.precision = dtype_name(dtype)
            if layer.name in wide:
                layer.attrs["fp32_reason"] = wide[layer.name]
        layers.append(layer)
    network.outputs = [as_dtype(name, dtype) for name, dtype in original_outputs.items()]
    network.layers = layers
    return network


def _layer_dtype(layer: Layer, network: Network, low: torch.dtype, wide: dict) -> torch.dtype | None:
    """The dtype a layer computes in, or None to leave it as converted (casts, explicit dtypes, non-float layers)."""
    if layer.kind in AS_CONVERTED or layer.attrs.get("dtype") is not None:
        return None
    touched = [network.tensors[n].dtype for n in (*layer.inputs, *layer.outputs) if n is not None]
    if not any(d in FLOATS for d in touched):
        return None
    return torch.float32 if layer.name in wide else low


def _cast_constants(network: Network, precision: dict, low: torch.dtype) -> None:
    """FP32 weights read only by low-precision layers are stored in the low dtype."""
    readers: dict[str, set] = {}
    for layer in network.layers:
        for n in layer.inputs:
            if n in network.constants:
                readers.setdefault(n, set()).add(precision[layer.name])
    limit = torch.finfo(low).max
    for name, dtypes in readers.items():
        value = network.constants[name]
        if value.dtype == torch.float32 and dtypes == {low}:
            network.constants[name] = value.clamp(-limit, limit).to(low)
            network.tensors[name].dtype = low


def _new_cast(network: Network, desc: TensorDesc, dtype: torch.dtype) -> tuple[Layer, TensorDesc]:
    (out,) = network.add_layer("cast", [desc], [(list(desc.shape), dtype)], {"dtype": dtype_name(dtype)}, source="precision boundary")
    out.layout = desc.layout
    return network.layers.pop(), out


def kept_fp32(network_layers: list[Layer]) -> dict[str, str]:
    """Layer name -> why it computes in FP32, fused layers' members included (every fusion records them)."""
    kept = {}
    for layer in network_layers:
        if "fp32_reason" in layer.attrs:
            kept[layer.name] = layer.attrs["fp32_reason"]
        kept.update(layer.attrs.get("fp32_members", {}))
    return kept


def with_fp32_members(attrs: dict, members) -> dict:
    """`attrs` of a layer fused from `members`, naming the members an FP32 rule kept wide.

    They still compute in FP32 inside the fused kernel; without this the report's "kept in FP32"
    list lost them whenever a fusion swallowed them (seen on the H100: exp + sum fused into one
    fused_reduction left the list empty)."""
    wide = kept_fp32(list(members))
    return {**attrs, "fp32_members": wide} if wide else attrs

