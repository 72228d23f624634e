"""The generated reduction (sum/mean/amax/amin, global average pool) with its fused prologue and epilogue
against the references (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Network
from kiln.engine.kernels import triton_reduce
from kiln.engine.kernels.fused_reduction import fused_reduction_reference, fused_reduction_unfused
from kiln.engine.kernels.registry import RunContext
from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
from kiln.engine.optimize.fuse_reductions import fuse_reduction_layers
from tests.engine.optimize.test_fuse_pointwise import run
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_reduce.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})


def residual_then(kind: str, attrs: dict, shape: list[int], out_shape: list[int], epilogue: bool, hand_out: bool):
    """reduction(x + ls * r) as ConvNeXt's and PoolFormer's last block feeds its pool, optionally
    followed by a GELU and with the residual stream read again."""
    net = Network()
    x = net.add_input("x", shape, torch.float16)
    r = net.add_input("r", shape, torch.float16)
    ls = net.add_constant("ls", (torch.rand([shape[1]] + [1] * (len(shape) - 2)) + 0.5).half())
    (scaled,) = net.add_layer("binary", [r, ls], [(shape, torch.float16)], {"op": "mul"})
    (stream,) = net.add_layer("binary", [x, scaled], [(shape, torch.float16)], {"op": "add"})
    (reduced,) = net.add_layer(kind, [stream], [(out_shape, torch.float16)], attrs)
    out = reduced
    if epilogue:
        (out,) = net.add_layer("unary", [reduced], [(out_shape, torch.float16)], {"op": "gelu"})
    net.outputs.append(out.name)
    if hand_out:
        (later,) = net.add_layer("unary", [stream], [(shape, torch.float16)], {"op": "neg"})
        net.outputs.append(later.name)
    return net


CASES = [
    ("pool", {"op": "adaptive_avg", "output_size": [1, 1]}, [2, 16, 5, 7], [2, 16, 1, 1], False, False, True),
    ("pool", {"op": "adaptive_avg", "output_size": [1, 1]}, [2, 16, 5, 7], [2, 16, 1, 1], True, True, False),
    ("reduce", {"op": "mean", "dims": [-1], "keepdim": False}, [3, 4, 50], [3, 4], True, False, False),
    ("reduce", {"op": "sum", "dims": [1, 2], "keepdim": False}, [2, 6, 5, 7], [2, 7], False, True, True),
    ("reduce", {"op": "amax", "dims": [2, 3], "keepdim": True}, [2, 6, 5, 7], [2, 6, 1, 1], True, False, True),
    ("reduce", {"op": "amin", "dims": None, "keepdim": False}, [3, 5, 6], [], False, False, False),
    # Vector norms by their ord (convert/reduce.py writes inf as the string "inf").
    ("reduce", {"op": "norm", "ord": 2.0, "dims": [2, 3], "keepdim": True}, [2, 6, 5, 7], [2, 6, 1, 1], True, False, True),
    ("reduce", {"op": "norm", "ord": 1.0, "dims": [-1], "keepdim": False}, [3, 4, 50], [3, 4], False, True, False),
    ("reduce", {"op": "norm", "ord": "inf", "dims": [1], "keepdim": False}, [2, 6, 5, 7], [2, 5, 7], False, False, True),
]


@pytest.mark.parametrize("kind,attrs,shape,out_shape,epilogue,hand_out,channels_last", CASES)
def test_fused_reduction_matches_the_reference(kind, attrs, shape, out_shape, epilogue, hand_out, channels_last):
    torch.manual_seed(len(shape) + shape[-1])
    net = residual_then(kind, attrs, shape, out_shape, epilogue, hand_out)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    values = {n: (torch.randn(shape) * 2 + 1).half().contiguous(memory_format=fmt) for n in ("x", "r")}
    values.update(net.constants)
    expected = run(net, values)
    fused = fuse_reduction_layers(fuse_pointwise_groups(net))
    layer = fused.layers[0]
    assert layer.kind == "fused_reduction" and kind not in [m.kind for m in fused.layers]
    assert len(layer.outputs) == (2 if hand_out else 1) and bool(layer.attrs["epilogue"]) == epilogue
    got = run(fused, values)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    on_device = [values[n].to(DEVICE) for n in layer.inputs]
    ref = fused_reduction_reference(layer, [v.float() for v in on_device], RUN)
    for tactic_fn in (triton_reduce.fused_reduce_triton, fused_reduction_unfused):
        out = tactic_fn(layer, on_device, RUN)
        refs, outs = (ref, out) if hand_out else ((ref,), (out,))
        for o, e in zip(outs, refs):
            assert o.shape == e.shape and o.dtype == e.dtype and relative_error(o.float(), e.float()) < 4e-3


def test_integer_and_unknown_reductions_are_not_fused():
    net = residual_then("reduce", {"op": "argmax", "dims": [1], "keepdim": False}, [2, 6, 5], [2, 5], False, False)
    assert "reduce" in [m.kind for m in fuse_reduction_layers(fuse_pointwise_groups(net)).layers]
