"""What a fused layer computes, in a few words: the profile shows it next to the layer's time, so a reader sees
the time per fused group ("conv+add+relu 0.012 ms") rather than a layer name the fusion made up.

Most fusions list their members in `fused_ops` ("unary:relu", "softmax:"); the GEMM and conv epilogue
fusions keep the library layer's kind and say what they took in attributes of their own, so each of
those kinds has a describer here. A layer no fusion touched describes as "".
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.engine.ir.network import Layer

# Longer groups (a whole attention block, a norm with its prologue) are cut here: the column stays readable.
MAX_OPS = 8

_DESCRIBERS: dict[str, Callable[[Layer], list[str]]] = {}


def describes(*kinds: str):
    """Register `fn(layer) -> [op name, ...]` for layers of these kinds (instead of their `fused_ops`)."""

    def register(fn):
        for kind in kinds:
            _DESCRIBERS[kind] = fn
        return fn

    return register


def fused_group(layer: Layer) -> str:
    ops = _DESCRIBERS.get(layer.kind, _listed_ops)(layer)
    if len(ops) <= 1:
        return ""
    shown = "+".join(ops[:MAX_OPS])
    return shown if len(ops) <= MAX_OPS else f"{shown} +{len(ops) - MAX_OPS} more"


# Kinds whose op attribute alone would not say what the op is: a cast names only its dtype, a norm only its type.
_NAMED_BY_KIND = {"cast": "to_{}", "norm": "{}_norm"}


def _short(op: str) -> str:
    # "unary:relu" -> "relu"; "softmax:" (no op attribute) -> "softmax"; "cast:float16" -> "to_float16"
    kind, _, name = op.partition(":")
    return _NAMED_BY_KIND.get(kind, "{}").format(name) if name else kind


def _listed_ops(layer: Layer) -> list[str]:
    return [_short(op) for op in layer.attrs.get("fused_ops", [])]


def _input_scale(layer: Layer) -> list[str]:
    # optimize/fuse_input_scale.py: the conv multiplies its input by a per-channel scale first.
    return ["mul"] if layer.attrs.get("scaled_input") else []


@describes("conv")
def _conv(layer: Layer) -> list[str]:
    return [*_input_scale(layer), "conv"]


@describes("conv_epilogue")
def _conv_epilogue(layer: Layer) -> list[str]:
    a = layer.attrs
    return [*_input_scale(layer), "conv", *(["add"] if a.get("residual") else []), *([a["activation"]] if a.get("activation") else [])]


@describes("linear")
def _linear(layer: Layer) -> list[str]:
    # The epilogue is a pointwise Program (kernels/codegen/program.py): one op per layer it replaced.
    program = layer.attrs.get("epilogue") or {"ops": []}
    return ["linear", *(_short(f"{op['kind']}:{op.get('op') or op.get('attrs', {}).get('dtype', '')}") for op in program["ops"])]
