"""A tactic that fails to prepare, to compile or to run is skipped with a warning; the build still gives right answers.

The timing path runs on the CPU here with a stand-in timer: the tactics are real functions on real
tensors, only the clock is fake. Each failing tactic is registered for the test alone.
"""

import itertools
import warnings

import pytest
import torch

import kiln
from kiln.engine.builder import build_plan
from kiln.engine.ir.network import Network
from kiln.engine.kernels import registry
from kiln.engine.kernels.registry import REFERENCE, Tactic
from kiln.engine.runtime import PlanExecutor
from kiln.errors import KilnWarning
from kiln.settings import CompileSettings


def newest_is_fastest():
    """A timer that runs the tactic once and rates each later timed tactic faster: the injected one, timed last, wins."""
    calls = itertools.count(1)

    def timer(fn):
        fn()
        return 1.0 / next(calls)

    return timer


def mlp() -> tuple[Network, list[torch.Tensor]]:
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [4, 8], torch.float32)
    w = net.add_constant("w", torch.randn(16, 8))
    b = net.add_constant("b", torch.randn(16))
    (h,) = net.add_layer("linear", [x, w, b], [([4, 16], torch.float32)])
    (y,) = net.add_layer("unary", [h], [([4, 16], torch.float32)], {"op": "relu"})
    net.outputs.append(y.name)
    return net, [net.constants[w.name], net.constants[b.name]]


def eager(x, weights):
    return torch.relu(torch.nn.functional.linear(x, *weights))


def inject(monkeypatch, fn, prepare=None, name="injected"):
    """Register `fn` as a linear tactic that applies everywhere, for this test only."""
    monkeypatch.setitem(registry._TACTICS["linear"], name, Tactic("linear", name, fn, lambda layer, target: True, prepare))


def build_and_check(net, weights) -> list[str]:
    plan = build_plan(net, CompileSettings(), timer=newest_is_fastest())
    x = torch.randn(4, 8)
    (out,) = PlanExecutor(plan).run([x])
    torch.testing.assert_close(out, eager(x, weights))
    return [s.tactic for s in plan.steps]


def test_a_tactic_that_fails_to_compile_is_skipped_with_a_warning(monkeypatch):
    def fails_to_compile(layer, inputs, run):
        raise RuntimeError("triton.compiler.errors.CompilationError: at 12:4: unsupported tile\n  long traceback ...")

    inject(monkeypatch, fails_to_compile)
    net, weights = mlp()
    with pytest.warns(KilnWarning, match=r"layer linear \(linear\): tactic 'injected' failed .* while being timed.*CompilationError"):
        tactics = build_and_check(net, weights)
    assert tactics == [REFERENCE, REFERENCE]


def test_a_tactic_whose_prepare_raises_is_skipped(monkeypatch):
    def prepare(layer, weights):
        raise IndexError("prepare of a weight it did not expect")

    inject(monkeypatch, lambda layer, inputs, run: torch.nn.functional.linear(*inputs), prepare=prepare)
    net, weights = mlp()
    with pytest.warns(KilnWarning, match="tactic 'injected' failed to prepare.*IndexError: prepare of a weight"):
        assert build_and_check(net, weights) == [REFERENCE, REFERENCE]


def test_a_tactic_declining_a_layer_with_value_error_is_skipped_silently(monkeypatch):
    def declines(layer, inputs, run):
        raise ValueError("injected takes FP16/BF16 only")

    inject(monkeypatch, declines)
    net, weights = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error", KilnWarning)
        assert build_and_check(net, weights) == [REFERENCE, REFERENCE]


def test_the_fastest_tactic_raising_when_run_for_real_falls_back(monkeypatch):
    calls = itertools.count()

    def works_once(layer, inputs, run):
        if next(calls) > 0:  # timed fine, then fails at the real run (a cuDNN "no engine" on another stream, say)
            raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. no engine")
        return torch.nn.functional.linear(*inputs)

    inject(monkeypatch, works_once)
    net, weights = mlp()
    with pytest.warns(KilnWarning, match="tactic 'injected' failed when run for real.*no engine"):
        assert build_and_check(net, weights) == [REFERENCE, REFERENCE]


def test_a_tactic_giving_the_wrong_shape_is_not_kept(monkeypatch):
    inject(monkeypatch, lambda layer, inputs, run: torch.nn.functional.linear(*inputs)[:, :8])
    net, weights = mlp()
    with pytest.warns(KilnWarning, match=r"shapes \[\[4, 8\]\], the network expects \[\[4, 16\]\]"):
        assert build_and_check(net, weights) == [REFERENCE, REFERENCE]


def test_a_working_fast_tactic_is_chosen_and_its_prepared_weight_used(monkeypatch):
    def prepare(layer, weights):
        name = layer.inputs[1]
        return {name: weights[name].t().contiguous().t()}  # same values, column-major: a layout-only prepare

    inject(monkeypatch, lambda layer, inputs, run: torch.nn.functional.linear(*inputs), prepare=prepare)
    net, weights = mlp()
    plan = build_plan(net, CompileSettings(), timer=newest_is_fastest())
    assert plan.steps[0].tactic == "injected" and "w__injected" in plan.weights
    # The original weight is no longer stored, but its desc stays so a loaded plan can undo the preparation.
    assert "w" not in plan.weights and plan.tensors["w"].shape == [16, 8]
    x = torch.randn(4, 8)
    torch.testing.assert_close(PlanExecutor(plan).run([x])[0], eager(x, weights))


def test_a_ranked_build_runs_each_layer_and_falls_back(monkeypatch):
    # The path kiln.load takes on a new GPU: no timing, the saved tactic first, checked by running it.
    inject(monkeypatch, lambda layer, inputs, run: torch.nn.functional.linear(*inputs)[:, :8])
    net, weights = mlp()

    def saved_first(layer, candidates):
        return sorted(candidates, key=lambda t: t.name != "injected"), {}

    with pytest.warns(KilnWarning, match="tactic 'injected' failed when run for real"):
        plan = build_plan(net, CompileSettings(), rank=saved_first, timer=newest_is_fastest())
    assert [s.tactic for s in plan.steps] == [REFERENCE, REFERENCE]


def test_out_of_memory_while_timing_is_one_clear_error_not_a_skipped_tactic(monkeypatch):
    def needs_too_much(layer, inputs, run):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")

    inject(monkeypatch, needs_too_much)
    net, _ = mlp()
    with pytest.raises(kiln.OutOfMemoryError) as info:
        build_plan(net, CompileSettings(), timer=newest_is_fastest())
    message = str(info.value)
    assert "while timing tactic 'injected' of layer linear (linear)" in message
    assert "Tried to allocate 20.00 GiB" in message
    assert "smaller max_shape" in message and "max_cuda_graphs" in message and "has been freed" in message
    assert info.value.__context__ is None  # the original error, and the tensors its frames held, are gone
