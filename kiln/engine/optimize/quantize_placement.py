"""INT8/FP8 placement: conv/linear/matmul layers become 8-bit layers (kiln/quantize/placement.py).

Runs right before precision assignment (PASS_ORDER in optimize/__init__.py): it
calibrates on the FP32 network, and the 8-bit layers it makes say their own output dtype, so
precision assignment leaves them alone. A conv epilogue fused before it is carried into the
8-bit layer; otherwise the 8-bit layer absorbs the residual add and activation itself. With
no INT8/FP8 precision enabled it does nothing.
"""

from __future__ import annotations

from kiln.engine.ir.network import Network
from kiln.engine.optimize import OptimizeContext, optimize_pass
from kiln.quantize.block import quantize_block


@optimize_pass
def place_quantization(network: Network, ctx: OptimizeContext) -> Network:
    return quantize_block(network, ctx.block, ctx.settings)
