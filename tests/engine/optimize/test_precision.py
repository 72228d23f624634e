"""Precision assignment on the CPU: which dtype each tensor gets, boundary casts, FP32 rules."""

import torch

import kiln
from kiln.engine.ir.network import Network
from kiln.engine.ir.tensor import Layout
from kiln.engine.optimize import OptimizeContext
from kiln.engine.optimize.layout import mark_channels_last
from kiln.engine.optimize.precision import assign_precision
from kiln.settings import CompileSettings
from tests.gpu.models import MLP, SmallCNN, init_bn
from tests.helpers import relative_error


def _ctx(dtype):
    return OptimizeContext(CompileSettings(enabled_precisions=frozenset({torch.float32, dtype})), None, None)


def _exp_net():
    net = Network()
    x = net.add_input("x", [4, 8], torch.float32)
    w = net.add_constant("w", torch.randn(8, 8))
    (h,) = net.add_layer("linear", [x, w, None], [([4, 8], torch.float32)])
    (e,) = net.add_layer("unary", [h], [([4, 8], torch.float32)], {"op": "exp"})
    (s,) = net.add_layer("reduce", [e], [([4], torch.float32)], {"op": "sum", "dims": [1], "keepdim": False})
    net.outputs.append(s.name)
    return net


def test_fp16_casts_at_the_boundary_and_keeps_overflowing_layers_fp32():
    net = assign_precision(_exp_net(), _ctx(torch.half))
    kinds = [(layer.kind, layer.precision) for layer in net.layers]
    assert kinds == [
        ("cast", None),  # FP32 input -> FP16
        ("linear", "float16"),
        ("cast", None),  # FP16 -> FP32 for exp
        ("unary", "float32"),
        ("reduce", "float32"),
    ]
    assert net.constants["w"].dtype == torch.float16
    assert net.tensors[net.inputs[0]].dtype == torch.float32
    assert net.tensors[net.outputs[0]].dtype == torch.float32
    reasons = {layer.name: layer.attrs.get("fp32_reason") for layer in net.layers if layer.precision == "float32"}
    assert all(reasons.values())


def test_bf16_has_fp32_range_so_nothing_is_kept_wide():
    net = assign_precision(_exp_net(), _ctx(torch.bfloat16))
    assert [layer.precision for layer in net.layers if layer.kind != "cast"] == ["bfloat16"] * 3
    assert net.tensors[net.outputs[0]].dtype == torch.float32
    assert net.layers[-1].kind == "cast"


def test_out_of_range_constants_are_clamped_not_inf():
    net = Network()
    x = net.add_input("x", [4], torch.float32)
    m = net.add_constant("mask", torch.tensor([0.0, -1e9, 0.0, 1e9]))
    (y,) = net.add_layer("binary", [x, m], [([4], torch.float32)], {"op": "add"})
    net.outputs.append(y.name)
    net = assign_precision(net, _ctx(torch.half))
    assert torch.isfinite(net.constants["mask"]).all()
    assert net.constants["mask"][1] == -65504


def test_bf16_engine_on_cpu_matches_fp32():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(8, 64)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.bfloat16}, min_block_size=1)
    with torch.no_grad():
        out, ref = compiled(x), model(x)
    assert out.dtype == torch.float32
    assert relative_error(out, ref) < 5e-2


def test_channels_last_marks_conv_chains_and_the_input():
    compiled = kiln.compile(init_bn(SmallCNN()), [torch.randn(2, 3, 16, 16)], min_block_size=1, dryrun=False)
    (engine,) = compiled.engine_blocks.values()
    # Rebuild the network view from the plan: layers and tensor descs are what the pass reads.
    net = Network(inputs=list(engine.plan.inputs), outputs=list(engine.plan.outputs), tensors=dict(engine.plan.tensors))
    net.layers = [s.layer for s in engine.plan.steps]
    mark_channels_last(net)
    assert net.tensors[net.inputs[0]].layout == Layout.CHANNELS_LAST
    for layer in net.layers:
        if layer.kind == "conv":
            assert net.tensors[layer.outputs[0]].layout == Layout.CHANNELS_LAST
    flat = [net.tensors[o] for layer in net.layers for o in layer.outputs if net.tensors[o].rank == 2]
    assert flat and all(d.layout == Layout.CONTIGUOUS for d in flat)


def test_views_marked_only_where_every_reader_takes_strides():
    from kiln.engine.optimize.views import mark_views

    net = Network()
    x = net.add_input("x", [4, 8], torch.float32)
    (p,) = net.add_layer("permute", [x], [([8, 4], torch.float32)], {"dims": [1, 0]})
    (y,) = net.add_layer("unary", [p], [([8, 4], torch.float32)], {"op": "relu"})
    (q,) = net.add_layer("permute", [y], [([4, 8], torch.float32)], {"dims": [1, 0]})
    net.outputs.append(q.name)
    ctx = OptimizeContext(CompileSettings(device=torch.device("cuda")), None, None)
    mark_views(net, ctx)
    assert net.layers[0].attrs.get("view_ok") is True
    assert "view_ok" not in net.layers[2].attrs, "a network output is never a view"


def test_fused_layers_still_report_the_members_kept_in_fp32():
    # On the H100 the report's "kept in FP32" list came back empty: exp + sum became one fused_reduction
    # (and the add before exp the linear's epilogue), and the fusions dropped the members' reasons.
    from kiln.engine.optimize.precision import kept_fp32
    from tests.gpu.models import ExpSum
    from tests.helpers import optimized_for_cuda

    network, _ = optimized_for_cuda(ExpSum().eval(), [torch.randn(8, 32)])
    assert "fused_reduction" in [layer.kind for layer in network.layers]
    kinds = {name.split("_")[0] for name in kept_fp32(network.layers)}
    assert {"unary", "reduce"} <= kinds, kept_fp32(network.layers)
