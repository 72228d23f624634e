"""The Triton row normalisation against the norm reference (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Layer
from kiln.engine.kernels import triton_norm
from kiln.engine.kernels.norm import norm_reference
from kiln.engine.kernels.registry import RunContext
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_norm.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})


@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("shape,normalized", [((3, 7, 96), [96]), ((2, 5, 50), [50]), ((4, 3, 6, 10), [6, 10]), ((9, 1000), [1000])])
def test_matches_the_reference(kind, shape, normalized):
    torch.manual_seed(len(shape) + normalized[-1])
    x = (torch.randn(shape, device=DEVICE) * 3 + 1).half()
    w = torch.rand(normalized, device=DEVICE).half() + 0.5
    b = torch.randn(normalized, device=DEVICE).half()
    attrs = {"type": kind, "shape": normalized, "eps": 1e-5 if kind == "layer" else None}
    layer = Layer("norm", "n", [], [], attrs)
    ref = norm_reference(layer, [x.float(), w.float(), b.float() if kind == "layer" else None, None, None], RUN)
    out = triton_norm.norm_rows_triton(layer, [x, w, b if kind == "layer" else None, None, None], RUN)
    assert out.shape == ref.shape and out.dtype == torch.float16
    assert relative_error(out.float(), ref) < 4e-3


def test_permuted_rows_and_no_affine():
    """ConvNeXt's case: LayerNorm over the channels of an NCHW tensor held channels-last, read as a permuted view."""
    torch.manual_seed(0)
    x = torch.randn(2, 24, 5, 6, device=DEVICE).contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    layer = Layer("norm", "n", [], [], {"type": "layer", "shape": [24], "eps": 1e-6})
    ref = norm_reference(layer, [x, None, None, None, None], RUN)
    out = triton_norm.norm_rows_triton(layer, [x, None, None, None, None], RUN)
    assert relative_error(out, ref) < 1e-5


@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("permuted", [False, True])
def test_fused_prologue_and_epilogue(kind, permuted):
    """gelu(norm(x + r)) with x + r read again later (a pre-norm residual stream), over permuted NHWC rows or dense ones."""
    from kiln.engine.ir.network import Network
    from kiln.engine.kernels.fused_reduction import fused_reduction_reference, fused_reduction_unfused
    from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
    from kiln.engine.optimize.fuse_reductions import fuse_reduction_layers
    from tests.engine.optimize.test_fuse_pointwise import run

    torch.manual_seed(7)
    shape, f16 = [2, 5, 6, 24], torch.float16
    net = Network()
    x, r = net.add_input("x", shape, f16), net.add_input("r", shape, f16)
    w = net.add_constant("w", (torch.rand(24) + 0.5).half())
    b = net.add_constant("b", torch.randn(24).half()) if kind == "layer" else None
    (stream,) = net.add_layer("binary", [x, r], [(shape, f16)], {"op": "add"})
    attrs = {"type": kind, "shape": [24], "eps": 1e-6 if kind == "layer" else None}
    (normed,) = net.add_layer("norm", [stream, w, b, None, None], [(shape, f16)], attrs)
    (act,) = net.add_layer("unary", [normed], [(shape, f16)], {"op": "gelu"})
    (later,) = net.add_layer("unary", [stream], [(shape, f16)], {"op": "neg"})
    net.outputs += [act.name, later.name]
    values = {n: (torch.randn(2, 24, 5, 6) * 2 + 1).half().contiguous(memory_format=torch.channels_last) for n in ("x", "r")}
    if permuted:
        values = {n: v.permute(0, 2, 3, 1) for n, v in values.items()}
    else:
        values = {n: v.permute(0, 2, 3, 1).contiguous() for n, v in values.items()}
    values.update(net.constants)
    expected = run(net, values)
    fused = fuse_reduction_layers(fuse_pointwise_groups(net))
    assert [m.kind for m in fused.layers] == ["fused_reduction", "unary"]
    layer = fused.layers[0]
    got = run(fused, values)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    on_device = [values[n].to(DEVICE) if n is not None else None for n in layer.inputs]
    ref = fused_reduction_reference(layer, [v.float() if v is not None else None for v in on_device], RUN)
    for tactic_fn in (triton_norm.fused_norm_rows_triton, fused_reduction_unfused):
        out = tactic_fn(layer, on_device, RUN)
        for o, e in zip(out, ref):
            assert o.dtype == torch.float16 and relative_error(o.float(), e.float()) < 4e-3
