"""The sparse MLP chain (optimize/fuse_sparse_mlp.py, kernels/sparse_mlp.py), on the CPU.

Which linear pairs fuse (both 2:4, sparse_weights=True, shapes the sparse kernels take); the fused
layer's reference and dense tactics against eager on pruned MLPs; the transposed sparse chain
against the reference with a fake cuSPARSELt (tests/sparsity/test_cslt_operand.py) and the
generated transposed pass under Triton's interpreter; the report row; and a plan that chose the
chain answering densely where cuSPARSELt cannot run, before and after a save and a load. The real
library runs in tests/gpu/test_sparse.py.
"""

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln
from kiln.engine.builder.build import PreparedWeights, build_plan, prepared_name
from kiln.engine.kernels import sparse_gemm, sparse_mlp
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.registry import REFERENCE, RunContext, get_tactic
from kiln.engine.kernels.triton_transposed_epilogue import transposed_epilogue, triton
from kiln.engine.module import EngineModule
from kiln.engine.optimize.fuse_sparse_mlp import CHAIN_ATTR, KIND, fuse_sparse_mlp_layers
from kiln.engine.plan import Step
from kiln.engine.runtime.executor import PlanExecutor
from kiln.report.sparsity import sparsity_rows
from kiln.sparsity import prune_2to4
from tests.helpers import assert_outputs_match, plan_steps, relative_error
from tests.sparsity.test_cslt_operand import fake  # noqa: F401 -- a fixture

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}
needs_interpreter = pytest.mark.skipif(triton is None or torch.cuda.is_available(), reason="needs Triton's interpreter (no GPU)")


class Mlp(nn.Module):
    def __init__(self, d=64, f=128, act="gelu", residual=True):
        super().__init__()
        self.up, self.down, self.act, self.residual = nn.Linear(d, f), nn.Linear(f, d), ACTIVATIONS[act], residual

    def forward(self, x):
        y = self.down(self.act(self.up(x)))
        return x + y if self.residual else y


def _pruned(model, exclude=()):
    torch.manual_seed(0)
    prune_2to4(model.eval(), exclude=list(exclude))
    return model


def _network(model, x, sparse_weights=True):
    """The model's network as a CUDA build with sparse_weights would optimize it, and the CPU build's settings."""
    from kiln.api import make_settings
    from kiln.capture.export import capture
    from kiln.engine.convert import convert_graph
    from kiln.engine.optimize import OPTIMIZE_PASSES, OptimizeContext
    from kiln.lowering import lower
    from kiln.partition import partition

    options = {"torch_executed_ops": (), "device": "cpu", "min_block_size": 1, "sparse_weights": sparse_weights}
    settings = make_settings(model, [x], {}, enabled_precisions={torch.half}, **options)
    with torch.no_grad():
        captured = capture(model, [x], {}, settings)
    parts = partition(lower(captured.graph_module), settings)
    (block,) = parts.block_names
    gm = getattr(parts.graph_module, block)
    network = convert_graph(gm)
    ctx = OptimizeContext(dataclasses.replace(settings, device=torch.device("cuda")), gm, captured)
    for network_pass in OPTIMIZE_PASSES:
        network = network_pass(network, ctx)
    return network, settings


def _kinds(network):
    return [m.kind for m in network.layers]


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_a_pruned_mlp_becomes_one_layer_whose_reference_and_dense_tactics_match_eager(act):
    model = _pruned(Mlp(act=act))
    x = torch.randn(2, 8, 64)
    network, settings = _network(model, x)
    assert _kinds(network).count(KIND) == 1 and "linear" not in _kinds(network), _kinds(network)
    (mlp,) = [m for m in network.layers if m.kind == KIND]
    assert [i["rows"] for i in mlp.attrs[CHAIN_ATTR]] == [128, 64] and mlp.attrs["hidden_inputs"] == 0
    assert mlp.attrs["linears"][0]["attrs"]["epilogue"]["ops"][0]["attrs"]["op"] == act  # the activation, between
    assert [network.tensors[n].shape for n in mlp.inputs[1:5]] == [[128, 64], [128], [64, 128], [64]]
    plan = build_plan(network, settings)
    with torch.no_grad():
        eager = model.half()(x.half()).float()
    (ref,) = PlanExecutor(plan).run([x], torch.zeros(plan.arena.size, dtype=torch.uint8))
    assert relative_error(ref.float(), eager) < 1e-2
    names = ["dense_aten_addmm"] + (["dense_triton_gemm_64"] if triton is not None and not torch.cuda.is_available() else [])
    for name in names:
        plan.steps = [Step(s.layer, name) if s.layer.kind == KIND else s for s in plan.steps]
        (got,) = PlanExecutor(plan).run([x], torch.zeros(plan.arena.size, dtype=torch.uint8))
        assert relative_error(got.float(), ref.float()) < 3e-3, name


def test_only_pairs_of_2to4_linears_under_sparse_weights_fuse():
    x = torch.randn(2, 8, 64)
    # sparse_weights=False: nothing marked, nothing fused
    network, _ = _network(_pruned(Mlp()), x, sparse_weights=False)
    assert KIND not in _kinds(network)
    # the second weight left dense: both linears stay, each with its own mark
    network, _ = _network(_pruned(Mlp(), exclude=["down"]), x)
    assert KIND not in _kinds(network) and _kinds(network).count("linear") == 2
    # a hidden width the sparse kernels refuse (60: not a multiple of 16): dense, with the reason in the mark
    network, _ = _network(_pruned(Mlp(f=60)), x)
    assert KIND not in _kinds(network)
    assert any("not a multiple of 16" in (m.attrs["sparse_2to4"]["reason"] or "") for m in network.layers if m.kind == "linear")


def test_a_hidden_value_with_another_reader_is_not_fused():
    class Both(Mlp):
        def forward(self, x):
            h = self.act(self.up(x))
            return self.down(h), h

    network, _ = _network(_pruned(Both(residual=False)), torch.randn(2, 8, 64))
    assert KIND not in _kinds(network)


def test_the_fused_layer_reports_one_row_for_the_pair():
    network, _ = _network(_pruned(Mlp()), torch.randn(2, 8, 64))
    (mlp,) = [m for m in network.layers if m.kind == KIND]
    for info, alg in zip(mlp.attrs[CHAIN_ATTR], (25, 7)):
        info["alg_id"] = alg
    (row,) = sparsity_rows([Step(mlp, sparse_mlp.CHAIN, {sparse_mlp.CHAIN: 0.1, "dense_aten_addmm": 0.2})])
    assert row[1:6] == (KIND, "128x64 + 64x128", "yes", "sparse", sparse_mlp.CHAIN)
    assert "algs 25, 7" in row[7] and row[6].startswith(sparse_mlp.CHAIN)
    (row,) = sparsity_rows([Step(mlp, "dense_aten_addmm", {sparse_mlp.CHAIN: 0.3, "dense_aten_addmm": 0.2})])
    assert row[4] == "dense" and row[7] == "dense was faster at this shape"


def _layer_inputs(network, layer, x):
    # Every activation input of the MLP is the network input cast to FP16 (the first linear's input and the residual).
    return [network.constants[n] if n in network.constants else (x.half() if n is not None else None) for n in layer.inputs]


@needs_interpreter
@pytest.mark.parametrize("rows", [16, 13])  # 13: cuSPARSELt's operand padded to 16 rows, the padding never read back
def test_the_transposed_chain_matches_the_reference(fake, rows):  # noqa: F811
    model = _pruned(Mlp())
    x = torch.randn(rows, 64)
    network, _ = _network(model, x)
    (mlp,) = [m for m in network.layers if m.kind == KIND]
    inputs = _layer_inputs(network, mlp, x)
    chain = get_tactic(KIND, sparse_mlp.CHAIN)
    prepared = chain.prepare(mlp, {mlp.inputs[i]: inputs[i] for i in sparse_mlp.WEIGHT_INPUTS})
    packed = [prepared[mlp.inputs[i]] if i in sparse_mlp.WEIGHT_INPUTS else t for i, t in enumerate(inputs)]
    run = RunContext({})
    out = chain.fn(mlp, packed, run)
    ref = get_tactic(KIND, REFERENCE).fn(mlp, inputs, run)
    assert out.shape == ref.shape and relative_error(out.float(), ref.float()) < 5e-3
    # Both GEMMs untransposed, each with the algorithm searched for its own operand layout, kept in the attrs.
    assert [c["transpose_result"] for c in fake.calls if "alg_id" in c][-2:] == [False, False]
    assert all(info["alg_id"] == 3 and "transpose_result=False" in info["cslt_choice"] for info in mlp.attrs[CHAIN_ATTR])
    # retarget.py restores one weight at a time: the unprepare gives back each dense pruned weight.
    for i in sparse_mlp.WEIGHT_INPUTS:
        names = [prepared_name(n, sparse_mlp.CHAIN) if j in sparse_mlp.WEIGHT_INPUTS and j != i else n for j, n in enumerate(mlp.inputs)]
        restored = chain.unprepare(dataclasses.replace(mlp, inputs=names), prepared[mlp.inputs[i]])
        assert torch.equal(restored, inputs[i])


@needs_interpreter
@pytest.mark.parametrize("m,n,ld", [(70, 40, 72), (8, 130, 8), (129, 16, 136)])
def test_the_transposed_pass_against_torch(m, n, ld):
    torch.manual_seed(m + n)
    src = torch.randn(n, ld).half()
    bias = torch.randn(n).half()
    gamma = torch.rand(n).half()
    residual = torch.randn(2, m // 2, n).half() if m % 2 == 0 else torch.randn(m, n).half()
    ops = (
        {"kind": "unary", "args": [0], "attrs": {"op": "gelu"}},
        {"kind": "binary", "args": [3, 1], "attrs": {"op": "mul"}},
        {"kind": "binary", "args": [4, 2], "attrs": {"op": "add"}},
    )
    out = torch.empty(*residual.shape[:-1], n).half()
    transposed_epilogue(src, bias, Program(3, ops, (5,)), [gamma, residual], out.view(m, n), out.shape)
    ref = F.gelu(src[:, :m].float().t() + bias.float()) * gamma.float() + residual.reshape(m, n).float()
    assert relative_error(out.reshape(m, n).float(), ref) < 3e-3
    # In place over the transposed result, as the chain's hidden pass runs: the columns past m are left alone.
    relu = Program(1, ({"kind": "unary", "args": [0], "attrs": {"op": "relu"}},), (1,))
    hidden = src.clone()
    transposed_epilogue(hidden, bias, relu, [], hidden.t()[:m])
    assert relative_error(hidden[:, :m].float(), F.relu(src[:, :m].float() + bias.float()[:, None])) < 1e-3
    assert torch.equal(hidden[:, m:], src[:, m:])


class TwoLinears(nn.Module):
    # A CPU build fuses no epilogues, so its linears meet only without pointwise work between them.
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(64, 128), nn.Linear(128, 32)

    def forward(self, x):
        return self.down(self.up(x))


def _as_if_built_with_the_chain(compiled, model, x):
    """Each engine re-planned as a sparse GPU's build would leave it: the linear pair fused, on the chain tactic."""
    from kiln.api import make_settings
    from kiln.engine.builder.retarget import unprepared_network

    settings = make_settings(model, [x], {}, enabled_precisions={torch.half}, torch_executed_ops=(), device="cpu", min_block_size=1)
    for name, engine in compiled.engine_blocks.items():
        network = fuse_sparse_mlp_layers(unprepared_network(engine.plan))
        plan = build_plan(network, settings)
        weights = PreparedWeights(dict(plan.weights), plan.tensors)
        chain = get_tactic(KIND, sparse_mlp.CHAIN)
        for i, step in enumerate(plan.steps):
            if step.layer.kind == KIND:
                for info, alg in zip(step.layer.attrs[CHAIN_ATTR], (25, 7)):
                    info["alg_id"] = alg
                plan.steps[i] = Step(weights.apply(step.layer, chain), chain.name, {chain.name: 0.1, "dense_aten_addmm": 0.2})
        used = {n for s in plan.steps for n in s.layer.inputs if n is not None}
        plan.weights = {n: w for n, w in weights.values.items() if n in used}
        setattr(compiled.graph_module, name, EngineModule(plan, name))
    return compiled


def test_a_plan_on_the_chain_answers_densely_on_the_cpu_and_loads_as_dense(tmp_path, monkeypatch):
    model = _pruned(TwoLinears())
    x = torch.randn(2, 8, 64)
    compiled = kiln.compile(model, inputs=[x], enabled_precisions={torch.half}, min_block_size=1, sparse_weights=True)
    compiled = _as_if_built_with_the_chain(compiled, model, x)
    steps = plan_steps(compiled)
    assert [s.tactic for s in steps].count(sparse_mlp.CHAIN) == 1
    monkeypatch.setattr(sparse_gemm, "_warned", set())  # the dense-fallback warning is sparse_gemm.warn_dense_fallback's
    with pytest.warns(UserWarning, match="has no sparse tensor cores"):
        out = compiled(x)
    assert_outputs_match(out.float(), model(x), rtol=1e-2)
    for engine in compiled.engine_blocks.values():
        engine.plan.device = "cuda:0"
    path = tmp_path / "chain.kiln"
    kiln.save(compiled, path)
    with pytest.warns(kiln.KilnWarning, match="cusparselt_2to4_chain -> reference"):
        loaded = kiln.load(path, device="cpu")
    (step,) = [s for e in loaded.engine_blocks.values() for s in e.plan.steps if s.layer.kind == KIND]
    # The saved choice is still there (what a GPU build would re-run); the CPU computes the pair densely.
    assert [i["alg_id"] for i in step.layer.attrs[CHAIN_ATTR]] == [25, 7] and step.tactic == REFERENCE
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = loaded(x)
    assert_outputs_match(out.float(), model(x), rtol=1e-2)
