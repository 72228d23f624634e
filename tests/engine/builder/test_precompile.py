"""The builder compiles each distinct Triton candidate once, before timing: which (layer, tactic) pairs it runs."""

import torch

from kiln.engine.builder.precompile import jit_candidates
from kiln.engine.ir.network import Network
from kiln.engine.kernels import registry
from kiln.engine.kernels.registry import BuildTarget, Tactic

CUDA_TARGET = BuildTarget(torch.device("cuda"), torch.half)


def linears(widths: list[int]) -> Network:
    net = Network()
    x = net.add_input("x", [4, 8], torch.half)
    for i, width in enumerate(widths):
        w = net.add_constant(f"w{i}", torch.randn(width, 8).half())
        (y,) = net.add_layer("linear", [x, w, None], [([4, width], torch.half)])
        net.outputs.append(y.name)
    return net


def fake_tactics(monkeypatch):
    for name in ("triton_fake", "aten_fake"):
        monkeypatch.setitem(registry._TACTICS["linear"], name, Tactic("linear", name, lambda *a: None, lambda layer, target: True))


def test_identical_layers_compile_once_and_only_triton_tactics_are_run(monkeypatch):
    fake_tactics(monkeypatch)
    jobs = jit_candidates(linears([16, 16, 32]), CUDA_TARGET, {})
    fake = [layer.name for layer, tactic in jobs if tactic.name == "triton_fake"]
    assert len(fake) == 2  # 16 and 32 outputs: two kernels; the second 16-wide layer reuses the first's
    assert all(tactic.compiles_on_first_call for _, tactic in jobs)
    assert not any(tactic.name == "aten_fake" for _, tactic in jobs)



def test_precompile_runs_each_distinct_candidate_on_pool_threads_with_inputs_of_the_layer_shape(monkeypatch):
    import threading

    from kiln.engine.builder.build import PreparedWeights, random_tensor
    from kiln.engine.builder.precompile import precompile

    seen, lock = [], threading.Lock()

    def fake(layer, inputs, run):
        with lock:
            seen.append((threading.current_thread().name, list(inputs[0].shape), list(inputs[1].shape)))
        if inputs[1].shape[0] == 32:
            raise RuntimeError("out of resource: shared memory")  # a candidate that fails: reported, not raised

    monkeypatch.setitem(registry._TACTICS["linear"], "triton_fake", Tactic("linear", "triton_fake", fake, lambda layer, target: True))
    net = linears([16, 16, 32])
    weights = PreparedWeights(dict(net.constants), dict(net.tensors))
    cpu = BuildTarget(torch.device("cpu"), torch.half)
    ran, failed = precompile(net, weights, {}, cpu, lambda desc, run: random_tensor(desc, run, torch.device("cpu")))
    mine = sorted(s for s in seen)
    assert ran >= 2 and [list(m[1:]) for m in mine] == [[[4, 8], [16, 8]], [[4, 8], [32, 8]]]
    assert all(name.startswith("kiln-precompile") for name, *_ in mine)
    assert [(layer, tactic) for layer, tactic, _ in failed] == [("linear_2", "triton_fake")]
