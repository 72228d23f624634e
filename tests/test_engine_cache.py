"""The engine cache: a second compile of the same thing is loaded, anything different is built; a bad entry is rebuilt."""

import os
import warnings

import pytest
import torch
from torch import nn

import kiln
import kiln.engine_cache as engine_cache
from kiln.errors import KilnWarning
from tests.helpers import assert_outputs_match


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    model[1].running_mean.uniform_(-0.2, 0.2)
    return model.eval()


INPUTS = [kiln.Input((2, 3, 8, 8))]


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "engines")


@pytest.fixture
def count_builds(monkeypatch):
    """How many times the builder ran (a cache hit builds nothing)."""
    import kiln.api

    calls = []
    real = kiln.api.build_plan

    def counting(network, settings):
        calls.append(1)
        return real(network, settings)

    monkeypatch.setattr(kiln.api, "build_plan", counting)
    return calls


def entries(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_second_compile_loads_the_cached_engine(cache_dir, count_builds):
    x = torch.randn(2, 3, 8, 8)
    first = kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    built = len(count_builds)
    assert built >= 1 and len(entries(cache_dir)) == 1
    second = kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    assert len(count_builds) == built, "the second compile must not build"
    with torch.no_grad():
        assert torch.equal(second(x), first(x))
        assert_outputs_match(second(x), make_model()(x))
    assert str(second.report) == str(first.report)


@pytest.mark.parametrize(
    "change",
    [
        lambda: dict(model=make_model(seed=1)),  # other weights
        lambda: dict(inputs=[kiln.Input((3, 3, 8, 8))]),  # other input shape
        lambda: dict(min_block_size=2),  # other settings
        lambda: dict(torch_executed_ops=["aten.relu"]),
    ],
)
def test_anything_different_is_built_again(change, cache_dir):
    kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    args = dict(model=make_model(), inputs=INPUTS) | change()
    kiln.compile(args.pop("model"), engine_cache=True, cache_dir=cache_dir, **args)
    assert len(entries(cache_dir)) == 2  # a second key: a miss, built and stored


def test_key_covers_versions_and_ignores_reporting_settings(monkeypatch):
    from kiln.capture.export import capture
    from kiln.settings import CompileSettings

    captured = capture(make_model(), INPUTS, {}, CompileSettings())
    key = engine_cache.engine_key(captured, CompileSettings())
    assert key == engine_cache.engine_key(captured, CompileSettings(debug=True, cache_dir="/elsewhere"))
    assert key != engine_cache.engine_key(captured, CompileSettings(enabled_precisions=frozenset({torch.float32, torch.float16})))
    monkeypatch.setattr(engine_cache, "_versions", lambda: "kiln 99 torch 99 triton 99")
    assert key != engine_cache.engine_key(captured, CompileSettings())
    assert engine_cache.engine_key(captured, CompileSettings(calibrator=object())) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_entry_is_rebuilt_not_run(damage, cache_dir, count_builds):
    kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    (name,) = entries(cache_dir)
    path = os.path.join(cache_dir, name)
    data = bytearray(open(path, "rb").read())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data = bytearray(b"\x80\x04 not a kiln file")
    open(path, "wb").write(bytes(data))
    before = len(count_builds)
    with pytest.warns(KilnWarning, match="cannot be used"):
        again = kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    assert len(count_builds) > before
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_outputs_match(again(x), make_model()(x))
    kiln.load(path)  # the rebuilt entry is whole again


def test_env_var_names_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "from-env"))
    kiln.compile(make_model(), inputs=INPUTS, engine_cache=True)
    assert len(entries(tmp_path / "from-env")) == 1
    assert engine_cache.clear() == 1
    assert entries(tmp_path / "from-env") == []


def test_least_recently_used_entries_go_past_the_size_limit(cache_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error", KilnWarning)
        kiln.compile(make_model(0), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    (first,) = entries(cache_dir)
    one_entry = os.path.getsize(os.path.join(cache_dir, first))
    limit = int(one_entry * 2.5)
    kiln.compile(make_model(1), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir, cache_size_limit=limit)
    os.utime(os.path.join(cache_dir, first), (1, 1))  # make the first the oldest, whatever the clock's resolution
    kiln.compile(make_model(2), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir, cache_size_limit=limit)
    kept = entries(cache_dir)
    assert len(kept) == 2 and first not in kept


def test_dryrun_and_default_do_not_touch_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "c"))
    kiln.compile(make_model(), inputs=INPUTS)
    kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, dryrun=True)
    assert entries(tmp_path / "c") == []
