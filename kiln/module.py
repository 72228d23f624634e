"""CompiledModule: what kiln.compile returns. PyTorch fallback ops and engine blocks in one FX graph.

Inputs are checked before anything runs: structure, rank, shape range, dtype and device (index
included) must match what the module was compiled for, else InputMismatchError says which input
and what to do. A transposed, sliced or expanded input is made contiguous first, because a tactic
may read its input's memory directly (a Triton kernel, a view tactic) and take strides as given;
a contiguous view at a storage offset is passed as is, since every tactic reads from data_ptr().
Calls run with the module's CUDA device current, so Triton launches and streams follow a module
loaded onto cuda:1 whatever the caller's current device.
"""

from __future__ import annotations

import contextlib

import torch
import torch.utils._pytree as pytree

from kiln.capture.dynamic import check_symbols
from kiln.capture.input_spec import Input
from kiln.engine.ir.dtypes import dtype_name
from kiln.errors import InputMismatchError
from kiln.report.partition_report import PartitionReport


class CompiledModule(torch.nn.Module):
    """Call it like the original model: same arguments, same output structure."""

    def __init__(
        self,
        graph_module: torch.fx.GraphModule,
        input_specs: list[Input],
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        report: PartitionReport,
        device: torch.device,
    ):
        super().__init__()
        self.graph_module = graph_module
        self.input_specs = input_specs
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.report = report
        self.device = torch.device(device)

    def forward(self, *args, **kwargs):
        flat, spec = pytree.tree_flatten((args, _in_compiled_order(kwargs, self.in_spec)))
        if spec != self.in_spec:
            raise InputMismatchError(
                f"this module was compiled for inputs structured as {_describe_spec(self.in_spec)}, "
                f"but was called with {_describe_spec(spec)}. Pass the same positional and keyword inputs "
                "as at compile time."
            )
        for i, (value, spec_i) in enumerate(zip(flat, self.input_specs)):
            check_input(value, spec_i, i, self.device)
        check_symbols(flat, self.input_specs)
        flat = [x if x.is_contiguous() else x.contiguous() for x in flat]
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            outputs = self.graph_module(*flat)
        return pytree.tree_unflatten(list(outputs), self.out_spec)

    @property
    def engine_blocks(self) -> dict[str, torch.nn.Module]:
        from kiln.engine.module import EngineModule

        return {n: m for n, m in self.graph_module.named_children() if isinstance(m, EngineModule)}

    def memory(self):
        """What this module holds in device memory: weights, arenas, CUDA-graph pools (runtime/memory_report.py)."""
        from kiln.engine.runtime.memory_report import memory_report

        return memory_report(self.engine_blocks)

    def extra_repr(self) -> str:
        return f"inputs={[s.describe() for s in self.input_specs]}, engine_blocks={len(self.engine_blocks)}"


def check_input(value, spec: Input, index: int, device: torch.device) -> None:
    label = f"input #{index}" + (f" ({spec.name!r})" if spec.name else "")
    compiled_for = f"it was compiled for {spec.describe()} on {device}"
    if not isinstance(value, torch.Tensor):
        raise InputMismatchError(f"{label} is a {type(value).__name__}, not a tensor; {compiled_for}.")
    if value.dim() != len(spec.opt_shape):
        raise InputMismatchError(f"{label} has rank {value.dim()} (shape {tuple(value.shape)}); {compiled_for}.")
    for d, (size, lo, hi) in enumerate(zip(value.shape, spec.min_shape, spec.max_shape)):
        if not lo <= size <= hi:
            allowed = f"{lo}" if lo == hi else f"{lo}..{hi}"
            raise InputMismatchError(
                f"{label} has shape {tuple(value.shape)}: dimension {d} is {size}, outside the compiled range {allowed}; "
                f"{compiled_for}. Recompile with a kiln.Input(min_shape=..., max_shape=...) that covers it."
            )
    if value.dtype != spec.dtype:
        raise InputMismatchError(f"{label} has dtype {dtype_name(value.dtype)}; {compiled_for}. Cast it with .to({spec.dtype}).")
    if value.device.type != device.type:
        raise InputMismatchError(f"{label} is on {value.device}; {compiled_for}. Move it with .to('{device}').")
    if device.index is not None and value.device.index not in (None, device.index):
        raise InputMismatchError(
            f"{label} is on {value.device}, but this module runs on {device}. Move the input with .to('{device}'), "
            f"or load the module onto the input's device with kiln.load(path, device='{value.device}')."
        )


def _in_compiled_order(kwargs: dict, in_spec: pytree.TreeSpec) -> dict:
    """Keyword arguments in the order they were compiled with: pytree specs compare dict keys in order."""
    order = in_spec.child(1).context if in_spec.num_children == 2 else None
    if not kwargs or not order or set(order) != set(kwargs):
        return kwargs
    return {k: kwargs[k] for k in order}


def _describe_spec(spec: pytree.TreeSpec) -> str:
    args, kwargs = pytree.tree_unflatten(["T"] * spec.num_leaves, spec)
    shown = [str(a) for a in args] + [f"{k}={v}" for k, v in kwargs.items()]
    return f"({', '.join(shown)})".replace("'T'", "T")
