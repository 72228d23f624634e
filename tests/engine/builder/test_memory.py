"""The activation arena planner: no two live tensors share bytes, and dead tensors' bytes are reused."""

import torch

import kiln
from kiln.engine.builder.memory import lifetimes, overlapping_pairs, plan_arena
from kiln.engine.ir.network import Network, SymbolRange
from tests.gpu.models import SmallCNN, init_bn


def _engine_plan(model, x):
    compiled = kiln.compile(model, [x], min_block_size=1)
    (engine,) = compiled.engine_blocks.values()
    return engine.plan


def test_cnn_plan_has_no_overlapping_live_buffers_and_reuses_memory():
    plan = _engine_plan(init_bn(SmallCNN()), torch.randn(2, 3, 32, 32))
    layers = [s.layer for s in plan.steps]
    activations = {o for layer in layers for o in layer.outputs}
    spans = lifetimes(layers, plan.outputs, activations)
    arena = plan.arena
    assert set(arena.offsets) == activations
    assert overlapping_pairs(arena, spans) == []
    assert arena.size >= arena.peak_live
    assert arena.size < arena.total_unshared / 2, "a chain of layers must reuse the bytes of dead activations"
    for offset, size in arena.offsets.values():
        assert offset % 512 == 0 and offset + size <= arena.size


def test_chain_reuses_and_views_extend_lifetimes():
    net = Network()
    x = net.add_input("x", [64], torch.float32)
    (a,) = net.add_layer("unary", [x], [([64], torch.float32)], {"op": "relu"})
    (v,) = net.add_layer("reshape", [a], [([8, 8], torch.float32)], {"shape": [8, 8]})  # may be a view of a
    (b,) = net.add_layer("unary", [v], [([8, 8], torch.float32)], {"op": "neg"})
    (c,) = net.add_layer("unary", [b], [([8, 8], torch.float32)], {"op": "neg"})
    (d,) = net.add_layer("binary", [c, v], [([8, 8], torch.float32)], {"op": "add"})
    net.outputs.append(d.name)
    spans = lifetimes(net.layers, net.outputs, {a.name, v.name, b.name, c.name, d.name})
    # a is read directly only by the reshape, but its storage lives on in v until the add.
    assert spans[a.name] == (0, 4)
    arena = plan_arena(net.layers, net.tensors, net.outputs, {})
    assert overlapping_pairs(arena, spans) == []
    # b is dead once c exists, so d may take b's bytes.
    assert arena.offsets[d.name][0] == arena.offsets[b.name][0]


def test_sizes_come_from_the_max_symbol_values():
    net = Network()
    x = net.add_input("x", ["s0", 16], torch.float16)
    (a,) = net.add_layer("unary", [x], [(["s0", 16], torch.float16)], {"op": "relu"})
    net.outputs.append(a.name)
    arena = plan_arena(net.layers, net.tensors, net.outputs, {"s0": SymbolRange("s0", 1, 8, 32)})
    assert arena.offsets[a.name] == (0, 32 * 16 * 2)


FRESH_CASES = {
    "norm": ([torch.randn(2, 4, 5, 5), torch.ones(4), torch.zeros(4), None, None], {"type": "group", "groups": 2, "eps": 1e-5}),
    "pool": ([torch.randn(2, 4, 5, 5)], {"op": "adaptive_avg", "output_size": [5, 5]}),  # the same size as its input
    "softmax": ([torch.randn(3, 7)], {"op": "softmax", "dim": -1}),
    "index_select": ([torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 4, 5])], {"dim": 0}),  # every row, in order
}


def test_the_new_fresh_kinds_never_hand_back_their_input():
    # The planner ends a tensor's lifetime at its last reader only for FRESH_KINDS: a reference that returned a
    # view of its input (a pool to the input's own size, a gather of every row in order) would let the arena hand
    # those bytes to another tensor while they are still read. Each reference here must compute a new tensor.
    from kiln.engine.builder.memory import FRESH_KINDS
    from kiln.engine.ir.network import Layer
    from kiln.engine.kernels.registry import REFERENCE, RunContext, get_tactic

    for kind, (inputs, attrs) in FRESH_CASES.items():
        assert kind in FRESH_KINDS
        out = get_tactic(kind, REFERENCE).fn(Layer(kind, kind, [], ["y"], attrs), inputs, RunContext({}))
        shared = {t.untyped_storage().data_ptr() for t in inputs if t is not None}
        assert out.untyped_storage().data_ptr() not in shared, kind
