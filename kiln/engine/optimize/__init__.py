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


_REGISTERED: dict[str, object] = {}


def optimize_pass(fn):
    """Register a Network pass by its name; PASS_ORDER below says when it runs."""
    _REGISTERED[fn.__name__] = fn
    return fn


def cuda_pass(name: str):
    """Register `fn(network) -> network` as the pass `name`, run on CUDA builds only.

    The fusions exist for GPU tactics; on the CPU the reference tactics run the layers as converted.
    `fn` itself is returned unchanged: device-independent, so tests run it on CPU-built networks."""

    def register(fn):
        def on_cuda_only(network: Network, ctx: OptimizeContext) -> Network:
            return fn(network) if ctx.settings.device.type == "cuda" else network

        on_cuda_only.__name__ = name
        optimize_pass(on_cuda_only)
        return fn

    return register


def optimize_network(network: Network, block, captured, settings: CompileSettings) -> Network:
    ctx = OptimizeContext(settings, block, captured)
    for network_pass in OPTIMIZE_PASSES:
        network = network_pass(network, ctx)
    return network


# The order the passes run in, by name (each is registered in the module of the same idea):
# - bind_symbols first: every later pass sees the symbolic dims bound;
# - precision before the fusions, so fusions see final dtypes and the boundary casts it inserts;
#   8-bit placement just before it (it decides which layers precision must leave alone);
# - the unfused kernel count right after precision (its casts launch work too), the final count last of all;
# - hand-written attention first of the fusions, while its adds and softmax are still layers of their own;
# - conv epilogues, then input scales (before pointwise fusion, which would take the multiply),
#   then frozen BatchNorms as per-channel mul + add (so the pointwise groups take them),
#   then pointwise groups, then row moves composed into gathers, then views sunk below them (so a GEMM meets its element-wise reader), then
#   GEMM epilogues (which absorb those groups), then reductions (which
#   take the groups left next to a norm, softmax or mean as their prologue and epilogue); squeeze-excite
#   gates just before the reductions (their mean is taken whole, with the FC stages and activations after it);
#   a depthwise conv and the channel norm reading it after the reductions (a norm they gave a prologue or
#   epilogue keeps it);
# - layout after the fusions (it follows the fused layers to the inputs), views after layout;
# - 2:4 weight marking last: it reads the fused layers' weights in their final dtype; then the sparse MLP
#   chains, which join two marked linears (with the epilogues fused onto them) into one layer.
PASS_ORDER = [
    "bind_symbols",
    "place_quantization",
    "assign_precision",
    "count_unfused_kernels",
    "fuse_attention",
    "fuse_conv_epilogues",
    "fuse_input_scale",
    "batch_norm_as_affine",
    "fuse_pointwise",
    "compose_gathers",
    "sink_views",
    "fuse_gemm_epilogues",
    "fuse_squeeze_excite",
    "fuse_reductions",
    "fuse_depthwise_norm",
    "assign_channels_last",
    "mark_views",
    "mark_2to4_weights",
    "fuse_sparse_mlp",
    "count_kernels",
]

from kiln.engine.optimize import bind_symbols, fuse_conv, fuse_gemm_epilogue, fuse_input_scale, fuse_pointwise  # noqa: E402, F401, I001
from kiln.engine.optimize import fuse_reductions, fuse_squeeze_excite  # noqa: E402, F401, I001
from kiln.engine.optimize import layout, precision, quantize_placement, sparse_weights, views  # noqa: E402, F401, I001
from kiln.engine.optimize import compose_gathers, sink_views  # noqa: E402, F401, I001
from kiln.engine.optimize import fuse_attention  # noqa: E402, F401, I001
from kiln.engine.optimize import fuse_depthwise_norm  # noqa: E402, F401, I001
from kiln.engine.optimize import kernel_count  # noqa: E402, F401, I001
from kiln.engine.optimize import fuse_sparse_mlp  # noqa: E402, F401, I001
from kiln.engine.optimize import batch_norm_affine  # noqa: E402, F401, I001

OPTIMIZE_PASSES: list = [_REGISTERED[name] for name in PASS_ORDER]
if set(_REGISTERED) != set(PASS_ORDER):
    raise RuntimeError(f"optimize passes registered but not ordered, or ordered but not registered: {set(_REGISTERED) ^ set(PASS_ORDER)}")
