"""Ranged engines on the GPU: one CUDA graph per input shape, recorded on first use without re-tuning."""

import pytest
import torch

import kiln
import kiln.engine.builder.build as build_module
import kiln.engine.runtime.cuda_graphs as cuda_graphs_module
from benchmarks.models import TINY_ENCODER, Encoder
from tests.gpu.models import SmallCNN, init_bn
from tests.gpu.test_precision import TOLERANCE, fp32_reference
from tests.helpers import relative_error

CUDA = torch.device("cuda")


def ranged_cnn(**options):
    torch.manual_seed(0)
    model = init_bn(SmallCNN()).to(CUDA)
    spec = kiln.Input(min_shape=(1, 3, 32, 32), opt_shape=(4, 3, 32, 32), max_shape=(16, 3, 32, 32))
    return model, kiln.compile(model, [spec], min_block_size=1, require_full_compilation=True, **options)


def only_engine(compiled):
    (engine,) = compiled.engine_blocks.values()
    return engine


def test_one_graph_per_shape_then_replays(monkeypatch):
    model, compiled = ranged_cnn()
    engine = only_engine(compiled)
    timed = []
    monkeypatch.setattr(build_module, "time_on_gpu", lambda fn: timed.append(fn) or 0.0)
    with torch.no_grad():
        for batch in [4, 1, 16, 4, 1, 7]:
            x = torch.randn(batch, 3, 32, 32, device=CUDA)
            assert relative_error(compiled(x), model(x)) < 5e-3
    assert engine.graphs.records == 4  # 4, 1, 16, 7: a repeated shape replays its graph
    assert sorted(key[0][0] for key in engine.graphs.graphs) == [1, 4, 7, 16]
    assert timed == []  # a new shape records a graph; no tactic is timed again


def test_cudnn_searches_only_at_the_shape_the_tactics_were_timed_at(monkeypatch):
    flags = []
    real = cuda_graphs_module.cudnn_autotune

    def spy(enabled=True):
        flags.append(enabled)
        return real(enabled)

    monkeypatch.setattr(cuda_graphs_module, "cudnn_autotune", spy)
    model, compiled = ranged_cnn()
    with torch.no_grad():
        for batch in [4, 2]:
            compiled(torch.randn(batch, 3, 32, 32, device=CUDA))
    assert flags == [True, False]
    flags.clear()
    model, compiled = ranged_cnn(tune_new_shapes=True)
    with torch.no_grad():
        for batch in [4, 2]:
            compiled(torch.randn(batch, 3, 32, 32, device=CUDA))
    assert flags == [True, True]
    assert only_engine(compiled).plan.tune_new_shapes


@pytest.mark.parametrize("seq", [4, 9, 32])
def test_fp16_encoder_with_ranged_sequence_matches_fp32(seq):
    torch.manual_seed(0)
    model = Encoder(TINY_ENCODER).eval().to(CUDA)
    ranged = dict(min_shape=(2, 4), opt_shape=(2, 8), max_shape=(2, 32), dtype=torch.int64)
    compiled = kiln.compile(model, [kiln.Input(**ranged), kiln.Input(**ranged)], enabled_precisions={torch.half}, min_block_size=1)
    ids = torch.randint(0, TINY_ENCODER.vocab, (2, seq), device=CUDA)
    mask = torch.ones(2, seq, dtype=torch.int64, device=CUDA)
    mask[0, seq // 2 :] = 0
    with torch.no_grad():
        out = compiled(ids, mask)
    assert out.dtype == torch.float32
    assert relative_error(out, fp32_reference(lambda x: model(*x), (ids, mask))) < TOLERANCE[torch.half]


def test_loaded_ranged_engine_serves_the_range(tmp_path):
    model, compiled = ranged_cnn()
    path = tmp_path / "ranged.kiln"
    kiln.save(compiled, path)
    loaded = kiln.load(path, device=CUDA)
    with torch.no_grad():
        for batch in [1, 5, 16]:
            x = torch.randn(batch, 3, 32, 32, device=CUDA)
            assert relative_error(loaded(x), model(x)) < 5e-3
        with pytest.raises(kiln.InputMismatchError, match=r"dimension 0 is 17.*1\.\.16"):
            loaded(torch.randn(17, 3, 32, 32, device=CUDA))
