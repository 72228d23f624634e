"""INT8/FP8 placement: conv/linear/matmul layers become 8-bit layers (kiln/quantize/placement.py).

Runs after fusion (a fused conv epilogue is carried into the 8-bit layer) and before precision
assignment (the 8-bit layers say their own output dtype, so it leaves them alone). With no
INT8/FP8 precision enabled it does nothing.
"""

from __future__ import annotations

from kiln.engine.ir.network import Network
from kiln.engine.optimize import OptimizeContext, optimize_pass
from kiln.quantize.block import quantize_block


@optimize_pass
def place_quantization(network: Network, ctx: OptimizeContext) -> Network:
    return quantize_block(network, ctx.block, ctx.settings)
