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
