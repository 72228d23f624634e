"""Kernels per forward pass, before and after Kiln's fusions: what the report shows per engine block.

What is counted is layers that launch work: every layer but those mark_views turned into zero-copy
views (their view tactic launches nothing). One such layer is one kernel for most tactics, but the
count is of layers, not of a trace: a library call may launch more than one kernel (cuBLAS's
aten_addmm or cuDNN's aten_nhwc conv with a fused epilogue runs that epilogue as a second,
generated pass; a fused layer that fell back to its reference tactic runs one PyTorch op per
member), and a reshape of a contiguous tensor launches none. The profiler's tactic column says
which tactic each layer took.

The first count runs right after precision assignment (so the boundary casts it inserts are in),
before the first fusion pass; the second after the last pass. The builder copies both onto the Plan.
"""

from __future__ import annotations

from kiln.engine.ir.network import Layer, Network
from kiln.engine.optimize import OptimizeContext, optimize_pass


def launches_work(layer: Layer) -> bool:
    return not layer.attrs.get("view_ok")


def layers_launching_work(layers: list[Layer]) -> int:
    return sum(1 for layer in layers if launches_work(layer))


@optimize_pass
def count_unfused_kernels(network: Network, ctx: OptimizeContext) -> Network:
    network.kernels_unfused = layers_launching_work(network.layers)
    return network


@optimize_pass
def count_kernels(network: Network, ctx: OptimizeContext) -> Network:
    network.kernels = layers_launching_work(network.layers)
    return network
