"""The generated group norm (plain and with a fused prologue and epilogue) against the references (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer, Network
from kiln.engine.kernels import triton_group_norm
from kiln.engine.kernels.fused_reduction import fused_reduction_reference
from kiln.engine.kernels.norm import norm_reference
from kiln.engine.kernels.registry import RunContext
from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
from kiln.engine.optimize.fuse_reductions import fuse_reduction_layers
from tests.engine.optimize.test_fuse_pointwise import run
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_group_norm.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})


@pytest.mark.parametrize(
    "shape,groups,channels_last",
    [((2, 8, 5, 6), 4, False), ((2, 8, 5, 6), 1, True), ((1, 6, 7, 3), 3, True), ((3, 4, 10), 2, False), ((1, 16, 40, 40), 1, True)],
)
def test_group_norm_matches_the_reference(shape, groups, channels_last):
    torch.manual_seed(groups + shape[1])
    x = (torch.randn(shape, device=DEVICE) * 3 + 1).half()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(shape[1], device=DEVICE).half() + 0.5
    b = torch.randn(shape[1], device=DEVICE).half()
    layer = Layer("norm", "n", [], ["y"], {"type": "group", "groups": groups, "eps": 1e-5})
    ref = norm_reference(layer, [x.float(), w.float(), b.float(), None, None], RUN)
    out = triton_group_norm.group_norm_triton(layer, [x, w, b, None, None], RUN)
    assert out.shape == ref.shape and out.dtype == torch.float16
    assert relative_error(out.float(), ref) < 4e-3


def test_instance_norm_without_affine():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 6, 7, device=DEVICE) + 4  # a large mean: the statistics must not cancel
    layer = Layer("norm", "n", [], ["y"], {"type": "instance", "use_input_stats": True, "eps": 1e-5})
    ref = norm_reference(layer, [x, None, None, None, None], RUN)
    out = triton_group_norm.group_norm_triton(layer, [x, None, None, None, None], RUN)
    assert relative_error(out, ref) < 1e-5


def poolformer_block(channels_last: bool):
    """y = gelu(groupnorm(x + ls * r)) + z, and x + ls * r read again later (PoolFormer's residual stream)."""
    shape = [2, 8, 6, 5]
    net = Network()
    x = net.add_input("x", shape, torch.float16)
    r = net.add_input("r", shape, torch.float16)
    z = net.add_input("z", shape, torch.float16)
    ls = net.add_constant("ls", torch.rand(8, 1, 1).half())
    w = net.add_constant("w", torch.rand(8).half() + 0.5)
    b = net.add_constant("b", torch.randn(8).half())
    (scaled,) = net.add_layer("binary", [r, ls], [(shape, torch.float16)], {"op": "mul"})
    (stream,) = net.add_layer("binary", [x, scaled], [(shape, torch.float16)], {"op": "add"})
    (normed,) = net.add_layer("norm", [stream, w, b, None, None], [(shape, torch.float16)], {"type": "group", "groups": 2, "eps": 1e-5})
    (act,) = net.add_layer("unary", [normed], [(shape, torch.float16)], {"op": "gelu"})
    (y,) = net.add_layer("binary", [act, z], [(shape, torch.float16)], {"op": "add"})
    (again,) = net.add_layer("unary", [stream], [(shape, torch.float16)], {"op": "neg"})
    net.outputs += [y.name, again.name]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    values = {n: (torch.randn(shape) * 2 + 1).half().contiguous(memory_format=fmt) for n in ("x", "r", "z")}
    return net, {**values, **net.constants}


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_prologue_and_epilogue(channels_last):
    torch.manual_seed(3)
    net, values = poolformer_block(channels_last)
    expected = run(net, values)
    fused = fuse_reduction_layers(fuse_pointwise_groups(net))
    assert [m.kind for m in fused.layers] == ["fused_reduction", "unary"]
    layer = fused.layers[0]
    assert len(layer.outputs) == 2 and layer.attrs["prologue"] and layer.attrs["epilogue"]
    # The fused reference is exactly what the separate layers computed.
    got = run(fused, values)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    on_device = [values[n].to(DEVICE) if n is not None else None for n in layer.inputs]
    ref = fused_reduction_reference(layer, [v.float() if v is not None else None for v in on_device], RUN)
    out = triton_group_norm.fused_group_norm_triton(layer, on_device, RUN)
    for o, e in zip(out, ref):
        assert o.dtype == torch.float16 and relative_error(o.float(), e.float()) < 4e-3


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_statistics_norm(channels_last):
    """F.batch_norm(training=True): per-channel statistics over every sample, one group per channel."""
    torch.manual_seed(2)
    x = (torch.randn(3, 6, 5, 4, device=DEVICE) * 2 + 3).half()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(6, device=DEVICE).half() + 0.5, torch.randn(6, device=DEVICE).half()
    layer = Layer("norm", "n", [], ["y"], {"type": "batch_stats", "eps": 1e-5})
    ref = norm_reference(layer, [x.float(), w.float(), b.float(), None, None], RUN)
    out = triton_group_norm.group_norm_triton(layer, [x, w, b, None, None], RUN)
    assert relative_error(out.float(), ref) < 4e-3
