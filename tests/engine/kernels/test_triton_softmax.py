"""The generated row softmax with its fused prologue and epilogue against the references (Triton's interpreter on a CPU)."""

import pytest
import torch

from kiln.engine.ir.network import Network
from kiln.engine.kernels import triton_softmax
from kiln.engine.kernels.fused_reduction import fused_reduction_reference, fused_reduction_unfused
from kiln.engine.kernels.registry import RunContext
from kiln.engine.optimize.fuse_pointwise import fuse_pointwise_groups
from kiln.engine.optimize.fuse_reductions import fuse_reduction_layers
from tests.engine.optimize.test_fuse_pointwise import run
from tests.helpers import relative_error

pytestmark = pytest.mark.skipif(triton_softmax.triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = RunContext({})


def window_attention_scores(op: str, shape: list[int], with_epilogue: bool, hand_out: bool):
    """softmax(scores * scale + bias) as Swin's windows compute it, optionally followed by a cast and
    with the biased scores also read later."""
    net = Network()
    scores = net.add_input("scores", shape, torch.float16)
    bias = net.add_input("bias", shape[1:], torch.float16)
    (scaled,) = net.add_layer("binary", [scores, None], [(shape, torch.float16)], {"op": "mul", "scalar": 0.125})
    (biased,) = net.add_layer("binary", [scaled, bias], [(shape, torch.float16)], {"op": "add"})
    (probs,) = net.add_layer("softmax", [biased], [(shape, torch.float16)], {"op": op, "dim": len(shape) - 1, "dtype": None})
    out = probs
    if with_epilogue:
        (out,) = net.add_layer("cast", [probs], [(shape, torch.float32)], {"dtype": "float32"})
    net.outputs.append(out.name)
    if hand_out:
        (later,) = net.add_layer("unary", [biased], [(shape, torch.float16)], {"op": "relu"})
        net.outputs.append(later.name)
    values = {"scores": (torch.randn(shape) * 8).half(), "bias": torch.randn(shape[1:]).half()}
    return net, values


@pytest.mark.parametrize(
    "op,shape,with_epilogue,hand_out",
    [("softmax", [4, 3, 7, 7], True, False), ("softmax", [2, 5, 49], False, True), ("log_softmax", [3, 2, 6, 40], True, True)],
)
def test_fused_softmax_matches_the_reference(op, shape, with_epilogue, hand_out):
    torch.manual_seed(len(shape) + shape[-1])
    net, values = window_attention_scores(op, shape, with_epilogue, hand_out)
    expected = run(net, values)
    fused = fuse_reduction_layers(fuse_pointwise_groups(net))
    kinds = [m.kind for m in fused.layers]
    assert kinds[0] == "fused_reduction" and kinds.count("softmax") == 0, kinds
    layer = fused.layers[0]
    assert len(layer.outputs) == (2 if hand_out else 1) and bool(layer.attrs["epilogue"]) == with_epilogue
    got = run(fused, values)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    on_device = [values[n].to(DEVICE) for n in layer.inputs]
    ref = fused_reduction_reference(layer, [v.float() for v in on_device], RUN)
    for tactic_fn in (triton_softmax.fused_softmax_triton, fused_reduction_unfused):
        out = tactic_fn(layer, on_device, RUN)
        refs, outs = (ref, out) if hand_out else ((ref,), (out,))
        for o, e in zip(outs, refs):
            assert o.dtype == e.dtype and relative_error(o.float(), e.float()) < 4e-3


def test_long_or_symbolic_rows_are_not_fused():
    net, _ = window_attention_scores("softmax", [2, 3, 9000], False, False)
    assert "softmax" in [m.kind for m in fuse_reduction_layers(fuse_pointwise_groups(net)).layers]


@pytest.mark.parametrize("window_batches", [1, 2])
def test_shifted_window_mask_across_reshapes(window_batches):
    """Swin's shifted windows: scores + bias, reshaped to split the windows, + mask, reshaped back, softmax:
    both adds become the softmax's prologue, each input read in the softmax's shape."""
    torch.manual_seed(window_batches)
    windows, heads, tokens = 2, 3, 7
    shape = [window_batches * windows, heads, tokens, tokens]
    split = [window_batches, windows, heads, tokens, tokens]
    net = Network()
    scores = net.add_input("scores", shape, torch.float16)
    bias = net.add_input("bias", shape[1:], torch.float16)
    mask = net.add_input("mask", [1, windows, 1, tokens, tokens], torch.float16)
    (biased,) = net.add_layer("binary", [scores, bias], [(shape, torch.float16)], {"op": "add"})
    (grouped,) = net.add_layer("reshape", [biased], [(split, torch.float16)], {"shape": split})
    (masked,) = net.add_layer("binary", [grouped, mask], [(split, torch.float16)], {"op": "add"})
    (back,) = net.add_layer("reshape", [masked], [(shape, torch.float16)], {"shape": shape})
    (probs,) = net.add_layer("softmax", [back], [(shape, torch.float16)], {"op": "softmax", "dim": 3, "dtype": None})
    net.outputs.append(probs.name)
    values = {
        "scores": (torch.randn(shape) * 4).half(),
        "bias": torch.randn(shape[1:]).half(),
        "mask": torch.where(torch.rand(1, windows, 1, tokens, tokens) < 0.3, -100.0, 0.0).half(),
    }
    expected = run(net, values)
    fused = fuse_reduction_layers(fuse_pointwise_groups(net))
    assert [m.kind for m in fused.layers] == ["fused_reduction"]
    layer = fused.layers[0]
    assert len(layer.attrs["prologue"]["ops"]) == 2 and layer.attrs["prologue_views"]
    got = run(fused, values)
    torch.testing.assert_close(got[probs.name], expected[probs.name], rtol=0, atol=0)
    on_device = [values[n].to(DEVICE) for n in layer.inputs]
    ref = fused_reduction_reference(layer, [v.float() for v in on_device], RUN)
    for tactic_fn in (triton_softmax.fused_softmax_triton, fused_reduction_unfused):
        assert relative_error(tactic_fn(layer, on_device, RUN).float(), ref.float()) < 4e-3
