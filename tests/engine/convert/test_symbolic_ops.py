"""Shape ops on a graph exported with a dynamic batch dim, run at several batch sizes.

Symbols are bound by hand (network.symbols) so this tests conversion and the reference
kernels apart from the Input-range plumbing of capture.
"""

import operator

import pytest
import torch
from torch.export import Dim

import kiln
from kiln.capture.decompositions import decomposition_table
from kiln.capture.export import freeze
from kiln.engine.builder import build_plan
from kiln.engine.convert import convert_graph, registry
from kiln.engine.ir.network import SymbolRange
from kiln.engine.runtime import PlanExecutor
from kiln.lowering import lower
from kiln.settings import CompileSettings
from tests.helpers import Lambda, assert_outputs_match

# From 3: slicing off one row of a batch of 2 would leave 1, a size torch.export specialises on.
MIN_BATCH, MAX_BATCH = 3, 64


def export_dynamic_batch(fn, x: torch.Tensor) -> torch.fx.GraphModule:
    batch = Dim("batch", min=MIN_BATCH, max=MAX_BATCH)
    program = torch.export.export(Lambda(fn), (x,), dynamic_shapes=(({0: batch},),), strict=False)
    return lower(freeze(program.run_decompositions(decomposition_table())))


def plan_with_batch_symbol(gm: torch.fx.GraphModule):
    network = convert_graph(gm)
    (batch,) = network.free_symbols()
    assert network.tensors[network.inputs[0]].shape[0] == batch
    network.symbols[batch] = SymbolRange(batch, MIN_BATCH, 4, MAX_BATCH, sources=[(0, 0)])
    return network, PlanExecutor(build_plan(network, CompileSettings()))


DYNAMIC = {
    "view_size": lambda x: x.view(x.shape[0], -1),
    "view_infer": lambda x: x.reshape(-1, 8) * 2,
    "flatten_batch": lambda x: x.flatten(0, 1),
    "flatten_rest": lambda x: x.flatten(1),
    "unsqueeze_expand_reshape": lambda x: x.unsqueeze(1).expand(-1, 3, -1, -1).reshape(-1, 6, 8),
    "expand_to_batch": lambda x: x[:1, :1].expand(x.shape[0], 6, 8) + x,
    "permute": lambda x: x.view(x.size(0), 3, -1).transpose(1, 2),
    "stack": lambda x: torch.stack([x, x * 2], 1),
    "cat_batch": lambda x: torch.cat([x, x[:, :2].flip(1).repeat(1, 3, 1)], 0),
    "cat_features": lambda x: torch.cat([x, -x], 2),
    "split_features": lambda x: x.split([2, 4], 1),
    "chunk_features": lambda x: x.chunk(2, 2),
    "slice_features": lambda x: x[:, 1:-1, ::3],
    "slice_batch_open": lambda x: x[1:],
    "slice_to_size": lambda x: x.view(x.shape[0] * 6, 8)[: x.shape[0]],
    "select_features": lambda x: x[:, 2],
    "select_batch_last": lambda x: x[-1],
    "arange_batch": lambda x: x + torch.arange(x.shape[0]).view(-1, 1, 1),
    "full_batch": lambda x: torch.full((x.shape[0], 1, 1), 2.0) * x,
    "zeros_like": lambda x: torch.zeros_like(x) + x,
    "new_zeros": lambda x: x.new_zeros(x.shape[0], 2),
    "divide_by_size": lambda x: x / x.shape[0],
    "mul_size": lambda x: x * (x.shape[0] * 2),
    "where_scalar": lambda x: torch.where(x > 0, x, 0.0),
    "gather_batch": lambda x: x.gather(2, (x.abs() * 3).long() % 8),
    "cast": lambda x: (x * 4).int().to(torch.int64),
}


@pytest.mark.parametrize("name", sorted(DYNAMIC))
def test_shape_ops_with_dynamic_batch(name):
    fn = DYNAMIC[name]
    gm = export_dynamic_batch(fn, torch.randn(4, 6, 8))
    ops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    assert all(registry.support_of(n) is None for n in ops), {n.name: registry.support_of(n) for n in ops}
    _, executor = plan_with_batch_symbol(gm)
    # Batch sizes other than the example's (4): a size baked in at conversion would fail here.
    for batch in (MIN_BATCH, 5, 17, MAX_BATCH):
        x = torch.randn(batch, 6, 8)
        ref = fn(x)
        out = executor.run([x])
        assert_outputs_match(tuple(out) if isinstance(ref, tuple) else out[0], ref)


def _size_node(target, make_value):
    """An FX node computing a size from a dynamic size `s`, with meta as torch.export writes it."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    s = ShapeEnv().create_unspecified_symint_and_symbol(7, ConstantSource("s"), DimDynamic.DYNAMIC)
    graph = torch.fx.Graph()
    size = graph.placeholder("s")
    size.meta["val"] = s
    node = graph.call_function(target, (size, 3))
    node.meta["val"] = make_value(s)
    return node


@pytest.mark.parametrize(
    "target, make_value", [(operator.floordiv, lambda s: s // 3), (operator.mul, lambda s: s * 3), (operator.sub, lambda s: s - 3)]
)
def test_size_arithmetic_is_supported(target, make_value):
    assert registry.support_of(_size_node(target, make_value)) is None


def test_size_modulo_is_evaluated():
    # sympy prints `s % 3` as PythonMod(s, 3); the engine's evaluator knows that form.
    assert registry.support_of(_size_node(operator.mod, lambda s: s % 3)) is None


def test_size_returned_to_pytorch_stays_in_pytorch():
    gm = export_dynamic_batch(lambda x: (x * 2, x.shape[0]), torch.randn(4, 6, 8))
    (size,) = [n for n in gm.graph.nodes if n.target is torch.ops.aten.sym_size.int]
    assert registry.support_of(size) == "size used outside the engine"


def test_size_nodes_hold_their_expression():
    gm = export_dynamic_batch(lambda x: x.view(x.shape[0] * 2, -1), torch.randn(4, 6, 8))
    network = convert_graph(gm)
    (batch,) = network.free_symbols()
    (reshape,) = network.layers
    assert reshape.attrs["shape"] == [f"2*{batch}", 24]


class _OneInput(torch.nn.Module):
    """forward(x), not forward(*args): dynamic_shapes for torch.export follow the signature."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("name", sorted(DYNAMIC))
def test_shape_ops_compiled_for_a_batch_range(name):
    fn = DYNAMIC[name]
    spec = kiln.Input(min_shape=(MIN_BATCH, 6, 8), opt_shape=(4, 6, 8), max_shape=(MAX_BATCH, 6, 8))
    compiled = kiln.compile(_OneInput(fn).eval(), [spec], min_block_size=1, require_full_compilation=True)
    for batch in (MIN_BATCH, 5, MAX_BATCH):
        x = torch.randn(batch, 6, 8)
        assert_outputs_match(compiled(x), fn(x))
