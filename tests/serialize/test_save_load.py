"""kiln.save / kiln.load: round trips, device choice, and modules that cannot be saved."""

import operator

import pytest
import torch
import torch.utils._pytree as pytree

import kiln
from kiln.module import CompiledModule
from kiln.report.partition_report import PartitionReport
from kiln.serialize import container
from tests.helpers import assert_outputs_match


def test_round_trip_gives_identical_outputs(mixed, tmp_path):
    model, compiled, args = mixed
    path = tmp_path / "mixed.kiln"
    kiln.save(compiled, path)
    loaded = kiln.load(path)
    assert isinstance(loaded, CompiledModule)
    with torch.no_grad():
        before, after = compiled(*args), loaded(*args)
    assert_outputs_match(after, before, rtol=0.0)
    assert_outputs_match(after, model(*args))


def test_round_trip_keeps_report_inputs_and_engines(mixed, tmp_path):
    _, compiled, _ = mixed
    kiln.save(compiled, tmp_path / "m.kiln")
    loaded = kiln.load(str(tmp_path / "m.kiln"))
    assert loaded.report.to_json() == compiled.report.to_json()
    assert [s.to_json() for s in loaded.input_specs] == [s.to_json() for s in compiled.input_specs]
    assert set(loaded.engine_blocks) == set(compiled.engine_blocks)
    assert loaded.in_spec == compiled.in_spec and loaded.out_spec == compiled.out_spec
    fallback = {r.op: r.reason for r in loaded.report.fallback}
    assert fallback["aten.cumprod.default"] == "unsupported op"
    assert fallback["aten.add.Tensor"] == "in torch_executed_ops"


def test_fallback_constants_are_saved(mixed, tmp_path):
    _, compiled, _ = mixed
    consts = [n.target for n in compiled.graph_module.graph.nodes if n.op == "get_attr"]
    assert consts, "the fixture should leave a constant in the PyTorch part of the graph"
    kiln.save(compiled, tmp_path / "m.kiln")
    loaded = kiln.load(tmp_path / "m.kiln")
    for name in consts:
        assert torch.equal(getattr(loaded.graph_module, name), getattr(compiled.graph_module, name))
        assert name in dict(loaded.graph_module.named_buffers())


def test_saved_again_gives_the_same_bytes(mixed, tmp_path):
    _, compiled, _ = mixed
    kiln.save(compiled, tmp_path / "a.kiln")
    kiln.save(kiln.load(tmp_path / "a.kiln"), tmp_path / "b.kiln")
    assert (tmp_path / "a.kiln").read_bytes() == (tmp_path / "b.kiln").read_bytes()


def test_file_starts_with_magic_and_version(mixed_bytes):
    assert mixed_bytes.startswith(container.MAGIC)
    assert int.from_bytes(mixed_bytes[8:12], "little") == container.FORMAT_VERSION


def test_load_moves_weights_to_the_requested_device(mixed, tmp_path):
    _, compiled, args = mixed
    kiln.save(compiled, tmp_path / "m.kiln")
    loaded = kiln.load(tmp_path / "m.kiln", device="cpu")
    assert loaded.device == torch.device("cpu")
    for engine in loaded.engine_blocks.values():
        assert all(w.device.type == "cpu" for w in engine.plan.weights.values())
        assert engine.plan.device == "cpu"
    loaded(*args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_load_onto_missing_cuda_says_so(mixed, tmp_path):
    _, compiled, _ = mixed
    kiln.save(compiled, tmp_path / "m.kiln")
    with pytest.raises(kiln.KilnError, match="CUDA is not available"):
        kiln.load(tmp_path / "m.kiln", device="cuda")


def test_save_refuses_a_python_function_in_the_fallback_graph(mixed, tmp_path):
    _, compiled, _ = mixed
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output((graph.call_function(torch.sin, (x,)),))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    spec = pytree.tree_flatten(((torch.ones(1),), {}))[1]
    out_spec = pytree.tree_flatten(torch.ones(1))[1]
    odd = CompiledModule(gm, compiled.input_specs[:1], spec, out_spec, PartitionReport([]), torch.device("cpu"))
    with pytest.raises(kiln.KilnError, match="sin.*not an aten operator"):
        kiln.save(odd, tmp_path / "odd.kiln")
    assert not (tmp_path / "odd.kiln").exists()


def test_save_refuses_something_that_is_not_compiled(tmp_path):
    with pytest.raises(kiln.KilnError, match="CompiledModule"):
        kiln.save(torch.nn.Linear(2, 2), tmp_path / "x.kiln")


def test_getitem_and_aten_ops_survive(mixed):
    from kiln.serialize import from_bytes, to_bytes

    loaded = from_bytes(to_bytes(mixed[1]))
    targets = {n.target for n in loaded.graph_module.graph.nodes if n.op == "call_function"}
    assert operator.getitem in targets
    assert torch.ops.aten.cumprod.default in targets


def test_dynamic_batch_round_trip(tmp_path):
    from tests.serialize.conftest import MixedModel

    torch.manual_seed(0)
    model = MixedModel().eval()
    spec = kiln.Input(min_shape=(1, 8), opt_shape=(4, 8), max_shape=(8, 8))
    compiled = kiln.compile(model, [spec, spec], min_block_size=1)
    kiln.save(compiled, tmp_path / "dyn.kiln")
    loaded = kiln.load(tmp_path / "dyn.kiln")
    assert loaded.input_specs[0].is_dynamic
    for batch in (1, 5, 8):
        x, scale = torch.randn(batch, 8), torch.rand(batch, 8)
        with torch.no_grad():
            assert_outputs_match(loaded(x, scale), compiled(x, scale), rtol=0.0)
            assert_outputs_match(loaded(x, scale), model(x, scale))
    with pytest.raises(kiln.InputMismatchError, match="outside the compiled range 1..8"):
        loaded(torch.randn(9, 8), torch.rand(9, 8))
