"""Compile every Triton candidate of a network at once, before the serial timing loop.

A cold build of a network with many distinct generated kernels spent most of its time compiling
them one after another: MobileNetV3-Large has 52, and on an H100 host each took about 0.9 s in
ptxas plus 0.2 s in LLVM, 57 of the build's 59 s. Timing must stay serial (two candidates timed at
once disturb each other), but compiling need not. Each distinct Triton candidate is run once, on
random inputs of its layer's shapes, from a pool of threads with a CUDA stream each: Triton's JIT
compiles on that first call, and ptxas runs as a subprocess, so the compiles overlap. The timing
loop then finds every kernel compiled.

Nothing here decides anything: a candidate that raises is ignored (the timing loop runs it again
and reports or skips it as always), and the outputs are dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from kiln.engine.ir.network import Layer, Network
from kiln.engine.ir.symbolic import evaluate_shape
from kiln.engine.kernels.registry import BuildTarget, RunContext, Tactic, tactics_for

MAX_WORKERS = 16


def jit_candidates(
    network: Network, target: BuildTarget, point: dict[str, int], offered: list[list[Tactic]] | None = None
) -> list[tuple[Layer, Tactic]]:
    """One (layer, tactic) per distinct compile: same tactic, attrs and input shapes compile the same kernel.

    `offered`: per layer, the tactics to consider (the builder's candidates, or only the choice a warm timing
    cache made); all that apply if not given."""
    seen: set[str] = set()
    jobs = []
    for i, layer in enumerate(network.layers):
        for tactic in offered[i] if offered is not None else tactics_for(layer, target):
            if not tactic.compiles_on_first_call:
                continue
            described = []
            for n in layer.inputs:
                desc = network.tensors.get(n) if n is not None else None
                described.append(None if desc is None else [evaluate_shape(desc.shape, point), str(desc.dtype), str(desc.layout)])
            key = json.dumps([layer.kind, tactic.name, layer.attrs, described], sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                jobs.append((layer, tactic))
    return jobs


def precompile(
    network: Network, weights, point: dict[str, int], target: BuildTarget, make_input, progress=None, offered=None
) -> tuple[int, list]:
    """Run each distinct Triton candidate once from a thread pool; returns how many ran and (layer, tactic, error) of those that raised.

    `weights` is the build's PreparedWeights; `make_input(desc, run_context)` makes a random activation;
    `offered` as for jit_candidates."""
    jobs = jit_candidates(network, target, point, offered)
    if len(jobs) < 2:
        return 0, []
    run = RunContext(point)
    device = target.device

    def run_once(job: tuple[Layer, Tactic]) -> None:
        layer, tactic = job
        try:
            with torch.no_grad(), own_stream(device):
                tactic.fn(layer, weights.inputs_for(layer, tactic, lambda n: make_input(network.tensors[n], run)), run)
        except Exception as exc:  # noqa: BLE001 -- the serial timing loop runs it again and reports why
            failures.append((layer.name, tactic.name, exc))
        finally:
            if progress is not None:
                progress.update(1)

    # Prepared weights outlive the jobs: made here, on the build's stream (and cached), not on a job's own.
    failures, declined = [], set()
    for layer, tactic in jobs:
        try:
            weights.for_tactic(layer, tactic)
        except Exception:  # noqa: BLE001 -- a tactic declining this layer; timing skips it again
            declined.add((layer.name, tactic.name))
    jobs = [job for job in jobs if (job[0].name, job[1].name) not in declined]
    workers = min(MAX_WORKERS, os.cpu_count() or 1, len(jobs))
    with ThreadPoolExecutor(workers, thread_name_prefix="kiln-precompile") as pool:
        list(pool.map(run_once, jobs))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(jobs), failures


@contextlib.contextmanager
def own_stream(device: torch.device):
    """Each job on a CUDA stream of its own, so the jobs' kernels do not queue behind each other's."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()
