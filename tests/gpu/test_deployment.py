"""Deployment on the GPU: refit with recorded CUDA graphs, the engine cache, `kiln bench`, the explorer's timings, serving."""

import json
import os

import pytest
import torch
from typer.testing import CliRunner

import kiln
from kiln.cli import app
from kiln.cli.commands import bench_file  # noqa: F401  (registers the commands)
from kiln.explorer.model import explorer_data
from tests.gpu.models import SmallCNN, init_bn
from tests.helpers import relative_error

CUDA = torch.device("cuda")
FP16_RTOL = 2e-2


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return init_bn(SmallCNN()).to(CUDA).half().eval()


def spec():
    return kiln.Input(min_shape=(1, 3, 32, 32), opt_shape=(4, 3, 32, 32), max_shape=(8, 3, 32, 32), dtype=torch.half)


def test_refit_after_cuda_graphs_were_recorded():
    x = torch.randn(4, 3, 32, 32, device=CUDA, dtype=torch.half)
    compiled = kiln.compile(model(0), inputs=[spec()], enabled_precisions={torch.half}, min_block_size=1)
    with torch.no_grad():
        for _ in range(3):
            compiled(x)  # records and replays a CUDA graph over the old weights
        kiln.refit(compiled, model(1).state_dict())
        out = compiled(x)
        assert relative_error(out, model(1)(x)) < FP16_RTOL
        fresh = kiln.compile(model(1), inputs=[spec()], enabled_precisions={torch.half}, min_block_size=1)
        assert relative_error(out, fresh(x)) < FP16_RTOL


def test_refit_a_loaded_file_on_the_gpu(tmp_path):
    path = tmp_path / "m.kiln"
    kiln.save(kiln.compile(model(0), inputs=[spec()], enabled_precisions={torch.half}, min_block_size=1), path)
    loaded = kiln.load(path)
    kiln.refit(loaded, model(2))
    x = torch.randn(3, 3, 32, 32, device=CUDA, dtype=torch.half)
    with torch.no_grad():
        assert relative_error(loaded(x), model(2)(x)) < FP16_RTOL


def test_engine_cache_hit_builds_nothing(tmp_path, monkeypatch):
    import kiln.api

    builds = []
    real = kiln.api.build_plan
    monkeypatch.setattr(kiln.api, "build_plan", lambda n, s: builds.append(1) or real(n, s))
    options = dict(inputs=[spec()], enabled_precisions={torch.half}, min_block_size=1, engine_cache=True, cache_dir=str(tmp_path))
    first = kiln.compile(model(0), **options)
    built = len(builds)
    exports = []
    real_export = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    second = kiln.compile(model(0), **options)
    assert built > 0 and len(builds) == built
    assert not exports, "a warm compile on the GPU ran torch.export: its module key missed"
    x = torch.randn(4, 3, 32, 32, device=CUDA, dtype=torch.half)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
    tactics = [[s.tactic for s in e.plan.steps] for e in second.engine_blocks.values()]
    assert tactics == [[s.tactic for s in e.plan.steps] for e in first.engine_blocks.values()]


def test_bench_reports_gpu_compute_time(tmp_path):
    path = tmp_path / "m.kiln"
    kiln.save(kiln.compile(model(0), inputs=[spec()], enabled_precisions={torch.half}, min_block_size=1), path)
    summary = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(path), "--iterations", "50", "--json", str(summary)])
    assert result.exit_code == 0, result.output
    assert "not a measure" not in result.output and "n/a" not in result.output
    numbers = json.loads(summary.read_text())
    assert numbers["gpu_compute_ms"]["median"] > 0 and numbers["device"].startswith("cuda")


def test_explorer_shows_builder_timings():
    compiled = kiln.compile(model(0), inputs=[spec()], enabled_precisions={torch.half}, min_block_size=1)
    data = explorer_data(compiled)
    layers = [layer for block in data["blocks"] for layer in block["layers"]]
    assert any(layer["ms"] is not None for layer in layers)
    assert any(len(layer["candidates"]) > 1 for layer in layers), "conv layers should have several timed candidates"


def test_serve_on_the_gpu(tmp_path):
    pytest.importorskip("ray.serve")
    import urllib.request

    from kiln.serve import codec, serve

    path = tmp_path / "m.kiln"
    m = model(0)
    kiln.save(kiln.compile(m, inputs=[spec()], enabled_precisions={torch.half}, min_block_size=1), path)
    server = serve(str(path), port=8790, num_replicas=1)
    try:
        x = torch.randn(2, 3, 32, 32, dtype=torch.half)
        body, kind = codec.encode_request([x], codec.NPY)
        with urllib.request.urlopen(urllib.request.Request(server.url, data=body, headers={"content-type": kind}), timeout=120) as r:
            (out,) = codec.decode_response(r.read(), r.headers["content-type"])
        with torch.no_grad():
            assert relative_error(out.to(CUDA), m(x.to(CUDA))) < FP16_RTOL
    finally:
        server.shutdown()
    assert os.path.exists(path)
