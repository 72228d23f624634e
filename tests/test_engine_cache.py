"""The engine cache: a second compile of the same thing is loaded, anything different is built; a bad entry is rebuilt.

A warm compile is looked up by the module key, without torch.export; a changed weight, source file
or setting misses it.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
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
    """The engines in the cache (the by-module index beside them is not counted)."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".kiln")) if os.path.isdir(directory) else []


@pytest.fixture
def no_export(monkeypatch):
    """Makes any torch.export fail: a compile that still works was served by the module key."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.export ran on a warm compile")

    def forbid():
        monkeypatch.setattr(torch.export, "export", refuse)

    return forbid


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


def test_warm_compile_runs_no_export(cache_dir, count_builds, no_export, monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    first = kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    built = len(count_builds)
    no_export()
    second = kiln.compile(make_model(), inputs=[kiln.Input((2, 3, 8, 8), name="image")], engine_cache=True, cache_dir=cache_dir)
    assert len(count_builds) == built
    assert second.input_specs[0].name == "image"  # the name given, not the one the cached compile recorded
    with torch.no_grad():
        assert torch.equal(second(x), first(x))
    monkeypatch.undo()  # refit captures the new model
    kiln.refit(second, make_model(seed=3).state_dict())  # a cache hit keeps what refit needs
    with torch.no_grad():
        assert_outputs_match(second(x), make_model(seed=3)(x))


def test_warm_compile_in_a_fresh_process_runs_no_export(cache_dir):
    kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    script = textwrap.dedent(
        f"""
        import torch, kiln
        from tests.test_engine_cache import INPUTS, make_model
        def refuse(*args, **kwargs):
            raise AssertionError("torch.export ran on a warm compile")
        torch.export.export = refuse
        compiled = kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir={cache_dir!r})
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            assert torch.allclose(compiled(x), make_model()(x), rtol=1e-4, atol=1e-5)
        print("hit")
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip().endswith("hit"), done.stderr[-3000:]


def test_one_changed_weight_misses(cache_dir, count_builds):
    kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    built = len(count_builds)
    changed = make_model()
    with torch.no_grad():
        changed[3].weight[5, 2, 0, 0] += 1e-3
    compiled = kiln.compile(changed, inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    assert len(count_builds) > built and len(entries(cache_dir)) == 2
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_outputs_match(compiled(x), changed(x))


@pytest.mark.parametrize(
    "change", [dict(min_block_size=2), dict(enabled_precisions={torch.float16}), dict(torch_executed_ops=["aten.relu"])]
)
def test_changed_settings_miss(change, cache_dir, count_builds):
    kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    built = len(count_builds)
    compiled = kiln.compile(make_model(), inputs=INPUTS, engine_cache=True, cache_dir=cache_dir, **change)
    assert len(entries(cache_dir)) == 2  # a second engine: a miss, built and stored
    assert len(count_builds) > built or not compiled.engine_blocks  # with relu in PyTorch no block is large enough to build


MODEL_SOURCE = """
import torch
from torch import nn
import {helper} as helper


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(helper.act({body}).mean(dim=(2, 3)))
"""


def load_net(directory, name: str, body: str, act: str) -> nn.Module:
    """Net from a source file written now: the same path each time, so only its contents differ."""
    helper = f"{name}_helper"
    with open(os.path.join(directory, f"{helper}.py"), "w") as f:
        f.write(f"import torch\n\n\ndef act(x):\n    return {act}\n")
    path = os.path.join(directory, "net_source.py")
    with open(path, "w") as f:
        f.write(MODEL_SOURCE.format(helper=helper, body=body))
    sys.path.insert(0, str(directory))
    try:
        for module_name, file in ((helper, f"{helper}.py"), (name, "net_source.py")):
            spec = importlib.util.spec_from_file_location(module_name, os.path.join(directory, file))
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(directory))
    return sys.modules[name].Net().eval()


def test_changed_forward_source_or_helper_file_misses(tmp_path, cache_dir, count_builds):
    x = torch.randn(2, 3, 8, 8)
    options = dict(inputs=INPUTS, engine_cache=True, cache_dir=cache_dir, min_block_size=1)
    kiln.compile(load_net(tmp_path, "net_a", "self.conv(x)", "torch.relu(x)"), **options)
    built = len(count_builds)
    kiln.compile(load_net(tmp_path, "net_b", "self.conv(x)", "torch.relu(x)"), **options)
    assert len(count_builds) == built  # same sources: a hit
    for i, (body, act) in enumerate([("self.conv(x) * 2", "torch.relu(x)"), ("self.conv(x) * 2", "torch.sigmoid(x)")]):
        net = load_net(tmp_path, f"net_c{i}", body, act)
        compiled = kiln.compile(net, **options)
        assert len(count_builds) > built, f"changed {'forward' if i == 0 else 'helper file'} was served from the cache"
        built = len(count_builds)
        with torch.no_grad():
            assert_outputs_match(compiled(x), net(x))


def test_unkeyable_module_is_keyed_by_its_capture(cache_dir, count_builds):
    from kiln.settings import CompileSettings

    model = make_model()
    model.register_forward_hook(lambda module, args, out: out * 2)
    assert engine_cache.module_key(model, INPUTS, {}, CompileSettings()) is None
    kiln.compile(model, inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    built = len(count_builds)
    again = kiln.compile(model, inputs=INPUTS, engine_cache=True, cache_dir=cache_dir)
    assert len(count_builds) == built  # the engine key still finds it
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_outputs_match(again(x), model(x))


def test_module_key_sees_attributes_and_ties():
    from kiln.settings import CompileSettings

    settings = CompileSettings()
    key = engine_cache.module_key(make_model(), INPUTS, {}, settings)
    assert key == engine_cache.module_key(make_model(), [torch.randn(2, 3, 8, 8)], {}, settings)
    other = make_model()
    other[0].padding = (2, 2)
    assert engine_cache.module_key(other, INPUTS, {}, settings) != key
    other = make_model()
    other[1].eps = 1e-3
    assert engine_cache.module_key(other, INPUTS, {}, settings) != key
    assert engine_cache.module_key(make_model(), INPUTS, {}, CompileSettings(cache_by_module=False)) == key  # not in the key
    other = make_model()
    other.extra = object()
    assert engine_cache.module_key(other, INPUTS, {}, settings) is None
