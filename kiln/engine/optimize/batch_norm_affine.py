"""An inference BatchNorm no fold could take becomes per-channel arithmetic the pointwise fusion absorbs.

Lowering folds a BatchNorm into the conv or linear before it (lowering/fold_batch_norm.py). One that
reads anything else (DenseNet's norm of the concatenated features, a pre-activation ResNet's norm
before its ReLU and conv, a norm after a pool) stayed a `norm` layer: a reference pass over memory of
its own, and a wall between its neighbours' element-wise layers. With frozen statistics it is
    x * scale[c] + shift[c],   scale = gamma / sqrt(var + eps),   shift = beta - mean * scale,
so it becomes a `mul` and an `add` by constant [C, 1, ...] vectors (and a cast back to its dtype),
element-wise layers like any other: fuse_pointwise joins them with the ReLU after them (and the
concat before them), one generated kernel where there were three passes.

scale and shift are computed once here in float64 and rounded once to FP32; the product and sum stay
in FP32 (the mul's and add's outputs are FP32 tensors), so the result is rounded once, to the norm's
own dtype, by the cast. The unfused path (the fused layer's reference, run op by op) computes the same.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_name
from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.tensor import TensorDesc
from kiln.engine.optimize import cuda_pass
from kiln.engine.optimize.precision import FLOATS
from kiln.lowering.fold_batch_norm import batch_norm_scale_shift


@cuda_pass("batch_norm_as_affine")
def batch_norm_as_affine(network: Network) -> Network:
    layers = []
    for layer in network.layers:
        layers += _affine_layers(network, layer) if _frozen_batch_norm(network, layer) else [layer]
    network.layers = layers
    return network


def _frozen_batch_norm(network: Network, layer: Layer) -> bool:
    if layer.kind != "norm" or layer.attrs.get("type") != "batch" or len(layer.outputs) != 1:
        return False
    x, weight, bias, mean, var = layer.inputs
    if mean not in network.constants or var not in network.constants:
        return False
    if any(p is not None and p not in network.constants for p in (weight, bias)):
        return False
    desc = network.tensors[x]
    return desc.rank >= 2 and desc.dtype in FLOATS and network.tensors[layer.outputs[0]].dtype in FLOATS


def _affine_layers(network: Network, norm: Layer) -> list[Layer]:
    x, weight, bias, mean, var = norm.inputs
    c = network.constants
    scale, shift = batch_norm_scale_shift(c.get(weight), c.get(bias), c[mean], c[var], norm.attrs["eps"])
    x_desc, out = network.tensors[x], network.tensors[norm.outputs[0]]
    # Channels are dim 1: the vectors broadcast over the trailing spatial dims.
    per_channel = [scale.shape[0], *([1] * (x_desc.rank - 2))]
    scale_desc = network.add_constant(f"{norm.name}_scale", scale.float().reshape(per_channel))
    shift_desc = network.add_constant(f"{norm.name}_shift", shift.float().reshape(per_channel))

    def fp32_value(base: str) -> str:
        desc = TensorDesc(network.new_name(base), list(out.shape), torch.float32)
        network.tensors[desc.name] = desc
        return desc.name

    scaled = fp32_value(f"{norm.name}_scaled")
    shifted = out.name if out.dtype == torch.float32 else fp32_value(f"{norm.name}_shifted")
    layers = [
        Layer("binary", network.new_name(f"{norm.name}_scale"), [x, scale_desc.name], [scaled], {"op": "mul"}, None, norm.source),
        Layer("binary", network.new_name(f"{norm.name}_shift"), [scaled, shift_desc.name], [shifted], {"op": "add"}, None, norm.source),
    ]
    if shifted != out.name:
        cast = Layer("cast", norm.name, [shifted], [out.name], {"dtype": dtype_name(out.dtype)}, None, norm.source)
        layers.append(cast)
    return layers
