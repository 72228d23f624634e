"""Shared checks: compile a model, run it and eager PyTorch on the same inputs, compare."""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree

import kiln

# FP32 engine vs eager: max |kiln - eager| / max |eager| over each output.
FP32_RTOL = 1e-4


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.dtype == torch.bool or not out.dtype.is_floating_point:
        return 0.0 if torch.equal(out, ref) else float("inf")
    out, ref = out.double(), ref.double()
    if torch.isnan(out).any() != torch.isnan(ref).any():
        return float("inf")
    scale = ref.abs().max().item() if ref.numel() else 1.0
    return ((out - ref).abs().max().item() / max(scale, 1e-12)) if ref.numel() else 0.0


def assert_outputs_match(out, ref, rtol: float = FP32_RTOL) -> None:
    out_leaves, out_spec = pytree.tree_flatten(out)
    ref_leaves, ref_spec = pytree.tree_flatten(ref)
    assert out_spec == ref_spec, f"output structure differs: {out_spec} vs {ref_spec}"
    for i, (o, r) in enumerate(zip(out_leaves, ref_leaves)):
        if not isinstance(r, torch.Tensor):
            assert o == r, f"output {i}: {o} != {r}"
            continue
        assert o.shape == r.shape, f"output {i}: shape {tuple(o.shape)} != {tuple(r.shape)}"
        assert o.dtype == r.dtype, f"output {i}: dtype {o.dtype} != {r.dtype}"
        err = relative_error(o, r)
        assert err <= rtol, f"output {i}: relative error {err:.3e} > {rtol:.1e}"


def check_against_eager(model: torch.nn.Module, *args, rtol: float = FP32_RTOL, full: bool = True, kwargs=None, **compile_kwargs):
    """Compile with every op on the engine (when `full`), compare with eager; return the compiled module."""
    kwargs = kwargs or {}
    model = model.eval()
    compile_kwargs.setdefault("min_block_size", 1)
    if full:
        compile_kwargs.setdefault("require_full_compilation", True)
    compiled = kiln.compile(model, list(args), kwarg_inputs=kwargs, **compile_kwargs)
    with torch.no_grad():
        ref = model(*args, **kwargs)
        out = compiled(*args, **kwargs)
    assert_outputs_match(out, ref, rtol)
    if full:
        assert compiled.report.pytorch_ops == 0, compiled.report.table()
    return compiled


class Lambda(torch.nn.Module):
    """Wrap a function of tensors as a module, for one-op converter tests."""

    def __init__(self, fn, *params: torch.Tensor):
        super().__init__()
        self.fn = fn
        self.params = torch.nn.ParameterList([torch.nn.Parameter(p, requires_grad=False) for p in params])

    def forward(self, *args):
        return self.fn(*args, *self.params)


def skip_unless_triton_compiles_ahead_of_time() -> None:
    """At the top of a module of sm_90 compile tests: skip it all where Triton is missing, or too old to compile
    for a GPU this machine does not have (what compile_for_sm90 needs)."""
    import pytest

    pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:  # pragma: no cover - an older Triton
        pytest.skip("this Triton cannot compile ahead of time", allow_module_level=True)


def compile_for_sm90(fn, constants: dict, argument_type) -> None:
    """A @triton.jit function through ptxas for an H100 (sm_90), without a GPU: `constants` gives its constexprs,
    `argument_type(name)` the Triton type of each other argument ("*fp16", "i32", "fp32"...)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {p: "constexpr" if p in constants else argument_type(p) for p in inspect.signature(fn.fn).parameters}
    triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32))


def run_outside_the_interpreter(module: str, tmp_path) -> None:
    """`python -m module` in a process of its own, without TRITON_INTERPRET (which tests/conftest.py sets on a CPU, and
    under which tl's functions run as numpy), with fresh Triton and Kiln caches; fails with its stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), KILN_CACHE_DIR=str(tmp_path))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", module], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]


def network_as_cuda_build(model, inputs, without=(), only=None, precisions=frozenset({torch.half}), calibrator=None):
    """The model captured, converted and optimized as a CUDA build would, on the CPU: (network, settings).

    Every optimize pass runs (the CUDA-only fusions too), but those named in `without`, or only those in
    `only`. Fusions are checked this way without a GPU; the settings are the CPU build's, for planning.
    With INT8/FP8 in `precisions`, `calibrator` (a kiln.ptq calibrator) calibrates on the CPU."""
    import dataclasses

    from kiln.api import make_settings
    from kiln.capture.export import capture
    from kiln.engine.convert import convert_graph
    from kiln.engine.optimize import OPTIMIZE_PASSES, OptimizeContext
    from kiln.lowering import lower
    from kiln.partition import partition
    from kiln.quantize.block import attach_calibration

    extra = {"calibrator": calibrator} if calibrator is not None else {}
    settings = make_settings(
        model, inputs, {}, enabled_precisions=set(precisions), torch_executed_ops=(), device="cpu", min_block_size=1, **extra
    )
    with torch.no_grad():
        captured = capture(model, inputs, {}, settings)
    parts = partition(lower(captured.graph_module), settings)
    attach_calibration(parts.graph_module, parts.block_names, captured, settings)
    (block,) = parts.block_names
    gm = getattr(parts.graph_module, block)
    network = convert_graph(gm)
    ctx = OptimizeContext(dataclasses.replace(settings, device=torch.device("cuda")), gm, captured)
    for network_pass in OPTIMIZE_PASSES:
        name = network_pass.__name__
        if name not in without and (only is None or name in only):
            network = network_pass(network, ctx)
    return network, settings


def optimized_for_cuda(model, inputs, without=()):
    """network_as_cuda_build's network with every pass but `without`, and its plan: (network, plan)."""
    from kiln.engine.builder.build import build_plan

    network, settings = network_as_cuda_build(model, inputs, without)
    return network, build_plan(network, settings)


def with_random_stats(bn, seed: int = 0):
    """A BatchNorm with random running statistics and affine parameters (seeded by its width + `seed`), so that
    folding it is a real test: fresh ones are the identity."""
    g = torch.Generator().manual_seed(bn.num_features + seed)
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    bn.bias.data.copy_(torch.randn(bn.num_features, generator=g))
    return bn


def calls_on_streams(compiled, inputs_per_thread: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Each list of inputs run through `compiled` by its own thread on its own CUDA stream, all at once: the
    outputs per thread, in order. How the GPU tests check one compiled module under concurrent callers."""
    from concurrent.futures import ThreadPoolExecutor

    def worker(inputs):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream), torch.no_grad():
            outs = [compiled(x) for x in inputs]
        stream.synchronize()
        return outs

    with ThreadPoolExecutor(len(inputs_per_thread)) as pool:
        return list(pool.map(worker, inputs_per_thread))


def plan_steps(compiled, *kinds: str) -> list:
    """Every engine step of a compiled module in run order, or only the steps of layer kinds `kinds`."""
    return [s for e in compiled.engine_blocks.values() for s in e.plan.steps if not kinds or s.layer.kind in kinds]


def print_timings(steps) -> None:
    """Each step's kept tactic and its candidates' times, fastest first: what `pytest -s` shows of a GPU build."""
    for s in steps:
        shown = ", ".join(f"{k} {v * 1000:.1f}us" for k, v in sorted(s.timings.items(), key=lambda kv: kv[1]))
        print(f"{s.layer.name}: kept {s.tactic} ({shown})")
