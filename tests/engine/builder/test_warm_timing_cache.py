"""A warm timing cache decides each layer before anything is built: only the chosen tactic is compiled and prepared, nothing is timed.

On the CPU with counting stand-in tactics: each is a real linear on real tensors that counts its calls and
its weight preparations; the timer runs a tactic once and rates it by which one ran. Tactics named triton_*
are compiled ahead (builder/precompile.py) like Triton kernels on a GPU.
"""

import collections
import threading

import pytest
import torch

from kiln.engine.builder import build_plan
from kiln.engine.builder.timing import TimingCache
from kiln.engine.ir.network import Network
from kiln.engine.kernels import registry
from kiln.engine.kernels.registry import Tactic
from kiln.engine.runtime import PlanExecutor
from kiln.errors import KilnWarning
from kiln.settings import CompileSettings

MS = {"triton_fast": 0.1, "triton_slow": 0.5}


class Counting:
    """Registers linear tactics that count runs and preparations; `timer` rates whichever of them ran."""

    def __init__(self, monkeypatch):
        self.runs = collections.Counter()
        self.prepared = collections.Counter()
        self.timed = 0
        self.lock = threading.Lock()
        self.monkeypatch = monkeypatch
        for name in MS:
            self.register(name)

    def register(self, name, fn=None):
        def run(layer, inputs, ctx):
            with self.lock:
                self.runs[name] += 1
            if fn is not None:
                fn()
            x, w, b = inputs
            return torch.nn.functional.linear(x, w.t(), b)  # the prepared weight is transposed

        def prepare(layer, weights):
            self.prepared[name] += 1
            return {layer.inputs[1]: weights[layer.inputs[1]].t().contiguous()}

        tactic = Tactic("linear", name, run, lambda layer, target: True, prepare)
        self.monkeypatch.setitem(registry._TACTICS["linear"], name, tactic)

    def timer(self, fn):
        before = dict(self.runs)
        fn()
        self.timed += 1
        ran = [n for n in self.runs if self.runs[n] != before.get(n, 0)]
        return MS.get(ran[0], 0.3) if ran else 1.0  # the reference: slowest

    def reset(self):
        self.runs.clear()
        self.prepared.clear()
        self.timed = 0


def two_linears() -> Network:
    torch.manual_seed(0)
    net = Network()
    x = net.add_input("x", [4, 8], torch.float32)
    w1, b1 = net.add_constant("w1", torch.randn(16, 8)), net.add_constant("b1", torch.randn(16))
    (h,) = net.add_layer("linear", [x, w1, b1], [([4, 16], torch.float32)])
    w2, b2 = net.add_constant("w2", torch.randn(12, 16)), net.add_constant("b2", torch.randn(12))
    (y,) = net.add_layer("linear", [h, w2, b2], [([4, 12], torch.float32)])
    net.outputs.append(y.name)
    return net


def eager(net: Network, x: torch.Tensor) -> torch.Tensor:
    c = net.constants
    return torch.nn.functional.linear(torch.nn.functional.linear(x, c["w1"], c["b1"]), c["w2"], c["b2"])


def build(counting: Counting, path: str):
    """Builds, checks the plan's answer, and leaves in `counting` what the build alone did."""
    net = two_linears()
    plan = build_plan(net, CompileSettings(timing_cache_path=path), timer=counting.timer)
    built = collections.Counter(counting.runs)
    x = torch.randn(4, 8)
    (out,) = PlanExecutor(plan).run([x])
    torch.testing.assert_close(out, eager(net, x))
    counting.runs = built
    return plan


def test_a_warm_cache_compiles_prepares_and_runs_only_the_chosen_tactic(monkeypatch, tmp_path):
    counting = Counting(monkeypatch)
    path = str(tmp_path / "timing.json")
    cold = build(counting, path)
    assert [s.tactic for s in cold.steps] == ["triton_fast", "triton_fast"]
    assert counting.timed == 6 and counting.runs["triton_slow"] > 0 and counting.prepared["triton_slow"] == 2

    counting.reset()
    warm = build(counting, path)
    assert [s.tactic for s in warm.steps] == ["triton_fast", "triton_fast"]
    assert counting.timed == 0
    assert counting.runs["triton_slow"] == 0 and counting.prepared["triton_slow"] == 0
    # triton_fast: compiled ahead once per layer, then run once per layer while the build walks the network.
    assert counting.runs["triton_fast"] == 4 and counting.prepared["triton_fast"] == 2
    # The report still shows every candidate's time, from the cache.
    assert warm.steps[0].timings == cold.steps[0].timings and set(warm.steps[0].timings) == {"reference", *MS}


def test_a_candidate_that_faulted_is_timed_again_next_build(monkeypatch, tmp_path):
    counting = Counting(monkeypatch)

    def fault():
        raise RuntimeError("out of resource: shared memory")

    counting.register("triton_flaky", fault)
    path = str(tmp_path / "timing.json")
    with pytest.warns(KilnWarning, match="triton_flaky"):
        build(counting, path)
    counting.reset()
    with pytest.warns(KilnWarning, match="triton_flaky"):
        build(counting, path)
    # Not decided from a build where a candidate faulted: it is compiled ahead and tried again at each layer.
    assert counting.runs["triton_flaky"] == 4
    assert TimingCache(path).layers == {}


def test_a_new_candidate_makes_the_layer_timed_again(monkeypatch, tmp_path):
    counting = Counting(monkeypatch)
    path = str(tmp_path / "timing.json")
    build(counting, path)
    counting.register("triton_new")
    counting.reset()
    plan = build(counting, path)
    assert counting.runs["triton_new"] > 0 and "triton_new" in plan.steps[0].timings
    # The candidates timed before come from the per-tactic entries: only the new one is measured, at each layer.
    assert counting.timed == 2
