"""`kiln bench model.kiln`: latency and throughput of a saved engine, summarised as trtexec does.

Each timed call is measured three ways: host time (until the call returns, i.e. the time to
enqueue the work), GPU compute time (CUDA events around the call) and latency (until the GPU
has finished, as a caller that reads the result sees it). On the CPU, Kiln runs the plain-PyTorch
reference tactics, so the numbers say nothing about Kiln's speed; the summary says so.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kiln.capture.input_spec import Input

CPU_WARNING = "CPU timings: Kiln runs its reference tactics on the CPU; these numbers are not a measure of its speed."


@dataclass
class BenchResult:
    device: str
    batch: int
    latency_ms: list[float]
    host_ms: list[float]
    gpu_ms: list[float] = field(default_factory=list)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def summary_rows(self) -> list[tuple[str, str]]:
        lat = self.latency_ms
        mean = statistics.fmean(lat)
        rows = [
            ("Throughput", f"{1000.0 / mean:.2f} qps ({self.batch * 1000.0 / mean:.1f} samples/s at batch {self.batch})"),
            ("Latency", _stats(lat)),
            ("Host time (enqueue)", _stats(self.host_ms)),
        ]
        rows.append(("GPU compute time", _stats(self.gpu_ms) if self.gpu_ms else "n/a (no GPU)"))
        rows.append(("Iterations", str(len(lat))))
        return rows

    def to_json(self) -> dict:
        out = {"device": self.device, "batch": self.batch, "iterations": len(self.latency_ms)}
        for name, values in (("latency_ms", self.latency_ms), ("host_ms", self.host_ms), ("gpu_compute_ms", self.gpu_ms)):
            if values:
                out[name] = {"mean": statistics.fmean(values), "median": statistics.median(values), "p99": percentile(values, 99)}
        out["throughput_qps"] = 1000.0 / statistics.fmean(self.latency_ms)
        if not self.is_cuda:
            out["note"] = CPU_WARNING
        return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def _stats(values: list[float]) -> str:
    return (
        f"min {min(values):.4f} ms, mean {statistics.fmean(values):.4f} ms, median {statistics.median(values):.4f} ms, "
        f"p99 {percentile(values, 99):.4f} ms, max {max(values):.4f} ms"
    )


def example_inputs(specs: list[Input], device: torch.device, shape: str = "opt") -> list[torch.Tensor]:
    """Random inputs at the specs' opt (or min/max) shapes: values like the builder's, never all zeros."""
    out = []
    for spec in specs:
        dims = {"min": spec.min_shape, "opt": spec.opt_shape, "max": spec.max_shape}[shape]
        if spec.dtype.is_floating_point:
            out.append(torch.randn(dims, device=device).to(spec.dtype))
        elif spec.dtype == torch.bool:
            out.append(torch.rand(dims, device=device) > 0.5)
        else:
            out.append(torch.randint(0, 2, dims, device=device, dtype=spec.dtype))
    return out


def measure(
    fn: Callable, inputs: list[torch.Tensor], warmup: int, iterations: int, on_step: Callable[[], None] | None = None
) -> BenchResult:
    device = inputs[0].device if inputs else torch.device("cpu")
    cuda = device.type == "cuda"
    latency, host, gpu = [], [], []
    with torch.no_grad():
        for _ in range(warmup):
            fn(*inputs)
        if cuda:
            torch.cuda.synchronize(device)
        for _ in range(iterations):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            fn(*inputs)
            t1 = time.perf_counter()
            if cuda:
                end.record()
                end.synchronize()
                gpu.append(start.elapsed_time(end))
            t2 = time.perf_counter()
            host.append((t1 - t0) * 1000.0)
            latency.append((t2 - t0) * 1000.0)
            if on_step is not None:
                on_step()
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 else 1
    return BenchResult(str(device), batch, latency, host, gpu)
