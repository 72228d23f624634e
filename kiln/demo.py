"""`python -m kiln demo`: compile a small ResNet-style CNN, compare it with eager PyTorch, save and load it.

Runs anywhere; on a machine with CUDA it also measures latency. CPU timings are never shown as
speed: Kiln's fast tactics and CUDA-graph replay exist only on the GPU, and on the CPU every layer
runs its plain-PyTorch reference tactic.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import kiln
from kiln.report.table import format_table


class DemoBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.down(x) if self.down is not None else x))


class DemoCNN(nn.Module):
    """A small ResNet: conv stem, three stages of two residual blocks, global pool, classifier."""

    def __init__(self, widths=(32, 64, 128), classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages += [DemoBlock(cin, w, 1 if i == 0 else 2), DemoBlock(w, w, 1)]
            cin = w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = DemoCNN()
    # Untrained BatchNorm is an identity in eval mode; random statistics make BN folding do real work.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = (out.double() - ref.double()).abs().max().item()
    return diff, diff / max(ref.abs().max().item(), 1e-12)


def cuda_latency_ms(fn, x: torch.Tensor, warmup: int = 20, iters: int = 100) -> float:
    """Median of per-call CUDA-event timings after a warm-up (first calls record CUDA graphs, pick kernels)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln demo", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    # torch.export trips over its own pytree deprecation; it says nothing about the user's model.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    device = torch.device(args.device)

    model = build_model().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    print(f"Kiln {kiln.__version__} demo: a ResNet-style CNN with BatchNorm, random weights, input {tuple(x.shape)} on {device}\n")

    compiled = kiln.compile(model, inputs=[kiln.Input(tuple(x.shape))], device=device, debug=False)
    print(compiled.report.table())

    with torch.no_grad():
        ref, out = model(x), compiled(x)
    abs_err, rel_err = errors(out, ref)
    rows = [["max abs error", "", f"{abs_err:.2e}"], ["max relative error", "", f"{rel_err:.2e}"]]
    if device.type == "cuda":
        eager_ms, kiln_ms = cuda_latency_ms(model, x), cuda_latency_ms(compiled, x)
        rows.append(["latency (median ms)", f"{eager_ms:.3f}", f"{kiln_ms:.3f}"])
        rows.append(["speed-up", "1.00x", f"{eager_ms / kiln_ms:.2f}x"])
    print("\nEager PyTorch vs Kiln (FP32)")
    print(format_table(["", "eager", "kiln"], rows))
    if device.type != "cuda":
        print("Latency is not shown: timings are only meaningful on a GPU (on the CPU Kiln runs its reference tactics).")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "demo.kiln")
        kiln.save(compiled, path)
        size = os.path.getsize(path)
        loaded = kiln.load(path)
        with torch.no_grad():
            again = loaded(x)
    same = torch.equal(again, out)
    print(f"\nSaved to a .kiln file of {size / 1024:.1f} KiB; loaded it back: outputs {'identical' if same else 'DIFFERENT'}.")
    ok = same and rel_err <= 1e-4
    print("Demo OK." if ok else "Demo FAILED: outputs differ from eager PyTorch beyond 1e-4 relative error.")
    return 0 if ok else 1
