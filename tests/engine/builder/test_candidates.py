"""Which depthwise tile configs the builder compiles and times (builder/candidates.py), decided from descs alone."""

import pytest
import torch

from kiln.engine.builder.candidates import candidates
from kiln.engine.ir.network import Network
from kiln.engine.kernels import triton_depthwise
from kiln.engine.kernels.registry import BuildTarget, tactics_for

pytestmark = pytest.mark.skipif(triton_depthwise.triton is None, reason="Triton is not installed")

CUDA_TARGET = BuildTarget(torch.device("cuda"), torch.half)
TILES = set(triton_depthwise.CONFIGS)


def depthwise(batch: int, channels: int, size: int) -> Network:
    net = Network()
    x = net.add_input("x", [batch, channels, size, size], torch.half)
    w = net.add_constant("w", torch.randn(channels, 1, 3, 3).half())
    attrs = {
        "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "transposed": False, "output_padding": [0, 0],
        "groups": channels, "activation": "silu", "residual": False,
    }  # fmt: skip
    (y,) = net.add_layer("conv_epilogue", [x, w, None], [([batch, channels, size, size], torch.half)], attrs)
    net.layers[0].precision = "float16"
    net.outputs.append(y.name)
    return net


def offered(net: Network) -> tuple[set[str], set[str]]:
    """(depthwise tiles offered, every other tactic offered), with the tactics that apply for comparison."""
    names = {t.name for t in candidates(net, net.layers[0], CUDA_TARGET, [{}])}
    others = {t.name for t in tactics_for(net.layers[0], CUDA_TARGET)} - TILES
    assert others <= names  # cuDNN, the reference, ... are never taken away
    return names & TILES, others


def test_a_batch_1_depthwise_conv_gets_the_two_tiles_that_win_there():
    # EfficientNet-b0's first depthwise conv at batch 1: 112 x 112 x 32, the largest size measured.
    tiles, _ = offered(depthwise(1, 32, 112))
    assert tiles == {"triton_depthwise", "triton_depthwise_64x32"}


def test_a_large_depthwise_conv_gets_every_tile():
    tiles, _ = offered(depthwise(8, 96, 56))
    assert tiles == TILES


def test_tiles_that_launch_the_same_kernel_are_offered_once():
    # At 16 channels each tile is narrowed to 16 wide: 32 x 64 launches as 64 x 32 does, 8 x 128 as 32 x 32.
    tiles, _ = offered(depthwise(8, 16, 112))
    assert tiles == {"triton_depthwise", "triton_depthwise_64x32"}
    launches = {triton_depthwise.block_sizes(16, triton_depthwise.CONFIGS[name]) for name in TILES}
    assert len(launches) == 2
