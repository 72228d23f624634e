"""How the builder picks a tactic from its timings at the opt shape and, for a ranged engine, at min and max."""

from types import SimpleNamespace

import pytest

from kiln.engine.builder.build import choose_tactic
from kiln.engine.ir.network import Layer, SymbolRange
from kiln.engine.ir.symbol_values import tuning_points


class FakeTuner:
    """Stands in for a LayerTuner at one shape: fixed timings, remembers what it kept; `broken` tactics raise when run."""

    def __init__(self, timings: dict[str, float], broken: tuple[str, ...] = ()):
        self.timings = timings
        self.broken = broken
        self.advanced = []

    def time_all(self, layer, candidates):
        return {t.name: self.timings[t.name] for t in candidates if t.name in self.timings}

    def run(self, layer, tactic):
        if tactic.name in self.broken:
            raise RuntimeError(f"{tactic.name} cannot run here")
        return [tactic.name]

    def keep(self, index, layer, values):
        self.advanced.extend(values)


def tactics(*names):
    return [SimpleNamespace(name=n) for n in names]


def test_static_engine_takes_the_fastest():
    tuner = FakeTuner({"reference": 1.0, "fast": 0.7, "faster": 0.5})
    chosen, timings = choose_tactic([tuner], 0, None, tactics("reference", "fast", "faster"))
    assert chosen.name == "faster" and timings == tuner.timings and tuner.advanced == ["faster"]


def test_ranged_engine_takes_the_smallest_worst_slowdown():
    opt = FakeTuner({"reference": 1.0, "fast": 0.9})
    small = FakeTuner({"reference": 0.2, "fast": 0.3})  # "fast" wins at opt but is 1.5x off at min
    large = FakeTuner({"reference": 4.0, "fast": 3.9})
    chosen, timings = choose_tactic([opt, small, large], 3, None, tactics("reference", "fast"))
    assert chosen.name == "reference"
    assert timings == opt.timings  # the report shows the opt shape's timings
    assert opt.advanced == small.advanced == large.advanced == ["reference"]


def test_a_tactic_that_fails_at_one_shape_is_not_chosen():
    opt = FakeTuner({"reference": 1.0, "fast": 0.5})
    large = FakeTuner({"reference": 4.0})  # "fast" cannot take the max shape
    chosen, _ = choose_tactic([opt, large], 0, None, tactics("reference", "fast"))
    assert chosen.name == "reference"


LAYER = Layer("linear", "fc1", ["x", "w", "b"], ["y"])


def test_a_chosen_tactic_that_raises_when_run_gives_way_to_the_next_best():
    opt = FakeTuner({"reference": 1.0, "fast": 0.5, "faster": 0.3})
    large = FakeTuner({"reference": 4.0, "fast": 2.0, "faster": 1.2}, broken=("faster",))
    with pytest.warns(UserWarning, match=r"layer fc1 \(linear\): tactic 'faster' failed when run.*faster cannot run here"):
        chosen, timings = choose_tactic([opt, large], 2, LAYER, tactics("reference", "fast", "faster"))
    assert chosen.name == "fast" and timings == opt.timings
    # Nothing of the failed tactic was kept at the point where it did run.
    assert opt.advanced == large.advanced == ["fast"]


def test_the_reference_is_the_last_resort():
    tuner = FakeTuner({"reference": 1.0, "fast": 0.5}, broken=("fast",))
    with pytest.warns(UserWarning, match="'fast' failed"):
        chosen, _ = choose_tactic([tuner], 0, LAYER, tactics("reference", "fast"))
    assert chosen.name == "reference" and tuner.advanced == ["reference"]


def test_single_candidate_is_not_timed():
    tuner = FakeTuner({})
    chosen, timings = choose_tactic([tuner], 0, None, tactics("reference"))
    assert chosen.name == "reference" and timings == {}


def test_tuning_points_are_opt_then_distinct_ends():
    assert tuning_points({}) == [{}]
    points = tuning_points({"s0": SymbolRange("s0", 1, 32, 128), "s1": SymbolRange("s1", 16, 16, 16)})
    assert points == [{"s0": 32, "s1": 16}, {"s0": 1, "s1": 16}, {"s0": 128, "s1": 16}]
    assert tuning_points({"s0": SymbolRange("s0", 8, 8, 64)}) == [{"s0": 8}, {"s0": 64}]
