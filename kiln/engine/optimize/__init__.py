"""Network → Network passes before the builder: symbols, precision, (later) fusion and layout.

The order lives in OPTIMIZE_PASSES; each pass is `fn(network, context) -> network`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.engine.ir.network import Network
from kiln.settings import CompileSettings


@dataclass
class OptimizeContext:
    settings: CompileSettings
    block: object  # the engine block's FX GraphModule
    captured: object  # the CapturedGraph (input specs, for symbol ranges)


OPTIMIZE_PASSES: list = []


def optimize_pass(fn):
    """Register a Network pass; passes run in the order their modules are imported below."""
    OPTIMIZE_PASSES.append(fn)
    return fn


def optimize_network(network: Network, block, captured, settings: CompileSettings) -> Network:
    ctx = OptimizeContext(settings, block, captured)
    for network_pass in OPTIMIZE_PASSES:
        network = network_pass(network, ctx)
    return network


# Pass modules, in the order their passes run.
from kiln.engine.optimize import bind_symbols  # noqa: E402, F401, I001


# Registration order is run order: conv fusion first (fewer layers to assign), then precision (it
# inserts boundary casts), then pointwise fusion (over final dtypes, casts included), then layout
# (which follows those casts to the network inputs).
from kiln.engine.optimize import fuse_conv  # noqa: E402, F401, I001
from kiln.engine.optimize import quantize_placement  # noqa: E402, F401, I001
from kiln.engine.optimize import precision  # noqa: E402, F401, I001
from kiln.engine.optimize import fuse_pointwise  # noqa: E402, F401, I001
from kiln.engine.optimize import fuse_gemm_epilogue  # noqa: E402, F401, I001
from kiln.engine.optimize import layout  # noqa: E402, F401, I001
from kiln.engine.optimize import views  # noqa: E402, F401, I001
# Last: it reads the fused layers and their weights in the final dtype (sparse_weights=True only).
from kiln.engine.optimize import sparse_weights  # noqa: E402, F401, I001
