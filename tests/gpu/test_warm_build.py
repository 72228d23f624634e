"""A build with a warm timing cache compiles only each layer's chosen Triton kernel and times nothing, and the
report says where the build's seconds went."""

import torch

import kiln
from kiln.engine.builder import build as build_module
from tests.gpu.models import ConvNeXtBlock, SmallCNN, init_bn
from tests.helpers import plan_steps, relative_error

CUDA = torch.device("cuda")


def counted_build(monkeypatch, model, x, cache: str):
    """Compiles `model`; returns it, how many tactics were timed and the Triton candidates compiled ahead per layer."""
    timed, compiled_ahead = [], []
    real_timer, real_precompile = build_module.time_on_gpu, build_module.precompile

    def timer(fn):
        timed.append(1)
        return real_timer(fn)

    def precompile(network, weights, point, target, make_input, progress=None, offered=None):
        compiled_ahead.append([[t.name for t in c if t.compiles_on_first_call] for c in offered])
        return real_precompile(network, weights, point, target, make_input, progress, offered)

    monkeypatch.setattr(build_module, "time_on_gpu", timer)
    monkeypatch.setattr(build_module, "precompile", precompile)
    fast = kiln.compile(model, [x], min_block_size=1, timing_cache_path=cache, enabled_precisions={torch.half})
    return fast, len(timed), compiled_ahead


def tactics(compiled) -> list[str]:
    return [s.tactic for s in plan_steps(compiled)]


def test_a_warm_build_compiles_only_the_chosen_kernels_and_times_nothing(monkeypatch, tmp_path):
    torch.manual_seed(0)
    cache = str(tmp_path / "timing.json")
    for model, x in [
        (init_bn(SmallCNN()).to(CUDA).half(), torch.randn(1, 3, 32, 32, device=CUDA).half()),
        (ConvNeXtBlock().to(CUDA).half().eval(), torch.randn(1, 64, 14, 14, device=CUDA).half()),
    ]:
        cold, cold_timed, cold_ahead = counted_build(monkeypatch, model, x, cache)
        warm, warm_timed, warm_ahead = counted_build(monkeypatch, model, x, cache)
        assert cold_timed > 0 and warm_timed == 0
        assert tactics(warm) == tactics(cold)
        # At most one Triton kernel per layer, and only the one chosen.
        chosen = tactics(warm)
        for layer_ahead, tactic in zip(warm_ahead[0], chosen):
            assert layer_ahead in ([], [tactic])
        assert sum(map(len, warm_ahead[0])) < sum(map(len, cold_ahead[0]))
        with torch.inference_mode():
            assert relative_error(warm(x).float(), model(x).float()) < 1e-2
        seconds = warm.report.build_seconds
        assert {"capture", "precompile", "running layers", "planning", "total"} <= set(seconds) and "timing" not in seconds
        assert "timing" in cold.report.build_seconds
