"""Conversion: an engine block's aten FX graph → engine.ir.Network, one registered converter per op.

Importing this package imports every converter module so they register themselves.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch.fx import GraphModule

from kiln.engine.convert.registry import ConvertContext, convert_node
from kiln.engine.ir.network import Network
from kiln.engine.ir.symbolic import shape_of
from kiln.engine.ir.tensor import TensorDesc
from kiln.errors import ConversionError

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")


def convert_graph(gm: GraphModule, truncate_double: bool = True) -> Network:
    """Every node of `gm` must be supported (partitioning made sure of it)."""
    network = Network()
    ctx = ConvertContext(network, lambda name: getattr(gm, name), truncate_double)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = node.meta["val"]
            dtype = torch.float32 if val.dtype == torch.float64 and truncate_double else val.dtype
            ctx.values[node] = network.add_input(node.name, shape_of(val.shape), dtype)
        elif node.op == "get_attr":
            ctx.values[node] = ctx.constant(getattr(gm, node.target), node.name)
        elif node.op == "call_function":
            try:
                ctx.values[node] = convert_node(ctx, node)
            except ConversionError:
                raise
            except Exception as exc:
                raise ConversionError(f"{ctx.where()}: {type(exc).__name__}: {exc}") from exc
        elif node.op == "output":
            for out in node.args[0]:
                desc = ctx.values[out] if not isinstance(out, (int, float, bool)) else ctx.tensor(out)
                if not isinstance(desc, TensorDesc):
                    raise ConversionError(f"engine block output {out} is not a tensor")
                if desc.role != "activation" or desc.name in network.outputs:
                    # An input, a weight or a repeated output: give it its own buffer so outputs never alias.
                    ctx.node = None
                    desc = network.add_layer("copy", [desc], [(desc.shape, desc.dtype)])[0]
                network.outputs.append(desc.name)
        else:
            raise ConversionError(f"unexpected FX node {node.op} {node.name} in an engine block")
    return network
