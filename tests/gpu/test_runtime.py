"""The CUDA-graph runtime: replay correctness, output ownership, the per-shape graph cache, tactic timing."""

import json

import pytest
import torch

import kiln
from kiln.engine.builder import build_plan
from kiln.engine.ir.network import Network
from kiln.engine.module import EngineModule
from kiln.settings import CompileSettings
from tests.gpu.models import MLP, SmallCNN, init_bn
from tests.helpers import relative_error

CUDA = torch.device("cuda")


def engines(compiled) -> list[EngineModule]:
    return list(compiled.engine_blocks.values())


def test_replay_matches_eager_fp32():
    torch.manual_seed(0)
    model = init_bn(SmallCNN()).to(CUDA)
    x = torch.randn(2, 3, 32, 32, device=CUDA)
    compiled = kiln.compile(model, [x], min_block_size=1)
    assert all(e.graphs is not None for e in engines(compiled))
    with torch.no_grad():
        ref = model(x)
        for _ in range(3):  # record, then replays
            out = compiled(x)
    # cuDNN and cuBLAS may run FP32 convs in TF32 (eager does too, with other algorithms): ~1e-3.
    assert relative_error(out, ref) < 5e-3
    assert sum(e.graphs.records for e in engines(compiled)) == len(engines(compiled))


def test_replay_sees_new_input_values():
    model = MLP().to(CUDA).eval()
    compiled = kiln.compile(model, [torch.randn(4, 64, device=CUDA)], min_block_size=1)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(4, 64, device=CUDA)
            assert relative_error(compiled(x), model(x)) < 5e-3


def test_kept_output_is_not_overwritten_by_next_call():
    model = MLP().to(CUDA).eval()
    compiled = kiln.compile(model, [torch.randn(4, 64, device=CUDA)], min_block_size=1)
    with torch.no_grad():
        a = compiled(torch.randn(4, 64, device=CUDA))
        kept = a.clone()
        b = compiled(torch.randn(4, 64, device=CUDA))
    assert a.data_ptr() != b.data_ptr()
    assert torch.equal(a, kept)
    assert not torch.equal(a, b)


def test_works_inside_and_outside_inference_mode():
    model = MLP().to(CUDA).eval()
    x = torch.randn(4, 64, device=CUDA)
    compiled = kiln.compile(model, [x], min_block_size=1)
    with torch.inference_mode():
        first = compiled(x)
    with torch.no_grad():
        second = compiled(x)
    assert torch.equal(first, second)


def _relu_add_plan(max_graphs: int):
    """A plan with no fixed shapes in its tactics (relu, x + relu(x)), so one plan serves any input shape."""
    net = Network()
    x = net.add_input("x", [4, 8], torch.float32)
    (r,) = net.add_layer("unary", [x], [([4, 8], torch.float32)], {"op": "relu"})
    (y,) = net.add_layer("binary", [x, r], [([4, 8], torch.float32)], {"op": "add"})
    net.outputs.append(y.name)
    return build_plan(net, CompileSettings(device=CUDA, max_cuda_graphs=max_graphs))


def test_graph_cache_one_graph_per_shape_lru_bounded():
    engine = EngineModule(_relu_add_plan(max_graphs=2))
    shapes = [(4, 8), (2, 8), (4, 8), (3, 8), (2, 8)]
    for shape in shapes:
        x = torch.randn(shape, device=CUDA)
        (out,) = engine(x)
        torch.testing.assert_close(out, x + x.relu())
    # (4,8) rec, (2,8) rec, (4,8) hit, (3,8) rec evicts (2,8), (2,8) rec evicts (4,8).
    assert engine.graphs.records == 4
    assert list(engine.graphs.graphs) == [((3, 8),), ((2, 8),)]


def test_builder_times_candidates_and_uses_timing_cache(tmp_path):
    cache = tmp_path / "timing.json"
    torch.manual_seed(0)
    model = init_bn(SmallCNN()).to(CUDA)
    x = torch.randn(2, 3, 32, 32, device=CUDA)
    compiled = kiln.compile(model, [x], min_block_size=1, timing_cache_path=str(cache), enabled_precisions={torch.half})
    steps = [s for e in engines(compiled) for s in e.plan.steps]
    convs = [s for s in steps if s.layer.kind in ("conv", "conv_epilogue")]
    assert convs and all({"reference", "aten_nhwc"} <= set(s.timings) for s in convs)
    assert all(s.tactic == min(s.timings, key=s.timings.get) for s in steps if s.timings)
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) >= 2 * len(convs)
    again = kiln.compile(model, [x], min_block_size=1, timing_cache_path=str(cache), enabled_precisions={torch.half})
    steps_again = [s for e in engines(again) for s in e.plan.steps]
    assert [s.timings for s in steps_again] == [s.timings for s in steps]


def test_profiler_times_every_layer():
    torch.manual_seed(0)
    model = init_bn(SmallCNN()).to(CUDA)
    x = torch.randn(2, 3, 32, 32, device=CUDA)
    compiled = kiln.compile(model, [x], min_block_size=1, enabled_precisions={torch.half})
    prof = kiln.profile(compiled, x)
    assert len(prof.rows) == sum(len(e.plan.steps) for e in engines(compiled))
    assert all(r.ms > 0 for r in prof.rows)
    assert prof.total_ms and prof.total_ms > 0
    text = prof.table()
    assert "conv" in text and "By kind" in text


@pytest.mark.parametrize("dtype", [torch.half, torch.bfloat16])
def test_arena_outputs_are_views_of_one_buffer(dtype):
    model = MLP().to(CUDA).eval()
    x = torch.randn(8, 64, device=CUDA)
    compiled = kiln.compile(model, [x], min_block_size=1, enabled_precisions={dtype})
    (engine,) = engines(compiled)
    with torch.no_grad():
        out = compiled(x)
        ref = model(x)
    assert engine.plan.arena.size > 0 and engine.graphs.arena is not None
    assert engine.graphs.arena.numel() == engine.plan.arena.size
    assert out.dtype == torch.float32
    assert relative_error(out, ref) < 2e-2


def test_attention_head_split_runs_as_views():
    from tests.gpu.models import TinyAttention

    torch.manual_seed(0)
    model = TinyAttention().to(CUDA).eval()
    x = torch.randn(2, 50, 64, device=CUDA)
    compiled = kiln.compile(model, [x], enabled_precisions={torch.half}, min_block_size=1)
    steps = [s for e in engines(compiled) for s in e.plan.steps]
    assert any(s.tactic == "view" for s in steps), [(s.layer.kind, s.tactic) for s in steps]
    with torch.no_grad():
        out = compiled(x)
        out = compiled(x)
    assert relative_error(out, model(x)) < 1e-2
