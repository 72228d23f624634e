"""What every Triton GEMM and conv template shares: the generated epilogue applied to its FP32
output tile before the single write, and the rules for where that write goes.

A template (triton_gemm_1x1.py, triton_depthwise.py, and any later GEMM/conv template,
quantised ones included) is Triton source text with an `{epilogue}` slot. `epilogue_lines`
fills it from the layer's arithmetic: the bias, then a residual tile, then the activation,
each rendered from the op vocabulary (kernels/codegen): any op of UNARY_TRITON is an
activation a template can fuse, so a new activation is one entry in that table, for every
template at once. `load_template` renders a template for one layer's epilogue and returns its
@triton.jit kernel, compiled once per distinct epilogue.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.program import Program, emit
from kiln.engine.kernels.codegen.triton_source import compile_in, load_kernel
from kiln.engine.kernels.pointwise import UNARY_OPS, UNARY_TRITON
from kiln.engine.kernels.registry import RunContext

try:
    import triton
except ImportError:  # a CPU-only install: no Triton tactic is offered
    triton = None

LOW_PRECISION = (torch.float16, torch.bfloat16)

MODULE_HEADER = "import triton\nimport triton.language as tl\nfrom triton.language.extra import libdevice\n\n\n"


def fusable_activation(name: str | None) -> bool:
    """Activations every template can fuse: those the op vocabulary has a Triton form for."""
    return name is None or name in UNARY_TRITON


def takes_2d_conv(layer, target) -> bool:
    """What every Triton conv template needs of a conv layer, whatever its groups: a CUDA target, a 2-D
    non-transposed conv computing in FP16/BF16, and an activation the vocabulary can fuse."""
    a = layer.attrs
    return (
        triton is not None
        and target.is_cuda
        and len(a["stride"]) == 2
        and not a["transposed"]
        and layer.precision in ("float16", "bfloat16")
        and fusable_activation(a.get("activation"))
    )


def activation_attrs(attrs: dict) -> dict:
    """The fused activation's own attributes (leaky_relu's slope, clamp's bounds) with its name."""
    return {**attrs.get("activation_attrs", {}), "op": attrs.get("activation")}


def apply_activation(y: torch.Tensor, attrs: dict) -> torch.Tensor:
    """The reference of a fused layer's activation: the same function the unfused unary layer ran."""
    name = attrs.get("activation")
    return y if name is None else UNARY_OPS[name](y, activation_attrs(attrs))


def finish_in_place(y: torch.Tensor, residual: torch.Tensor | None, attrs: dict) -> torch.Tensor:
    """y [+ residual] [activation], written over y (the caller's own fresh output) by one generated kernel.

    After a library conv or GEMM (cuDNN, cuBLAS, cuSPARSELt) this is the epilogue the library
    could not fuse: one read and one write of y instead of one pair per op. Where no Triton
    kernel can run (CPU), the reference ops compute the same."""
    if residual is None and attrs.get("activation") is None:
        return y
    from kiln.engine.kernels.fused_pointwise import write_over  # it imports the runtime, which imports this package

    extras = [] if residual is None else [residual]
    return write_over(epilogue_program(attrs, residual is not None), y, extras, RunContext({}))


def epilogue_program(attrs: dict, residual: bool) -> Program:
    """acc [+ residual] [activation], in the conv_epilogue reference's order, as a pointwise program."""
    ops, value = [], 0
    if residual:
        ops.append({"kind": "binary", "op": "add", "args": [0, 1], "attrs": {"op": "add"}})
        value = 2
    if attrs.get("activation") is not None:
        ops.append({"kind": "unary", "op": attrs["activation"], "args": [value], "attrs": activation_attrs(attrs)})
        value = (2 if residual else 1) + len(ops) - 1
    return Program(2 if residual else 1, tuple(ops), (value,))


def epilogue_lines(attrs: dict, residual_load: str | None, indent: str = "    ") -> str:
    """Triton statements that finish `acc` in place: residual add and activation from the vocabulary."""
    program = epilogue_program(attrs, residual_load is not None)
    inputs = ["acc"] + ([residual_load] if residual_load is not None else [])
    lines, (result,) = emit(program, inputs, prefix="ep")
    return "\n".join(indent + line for line in [*lines, f"acc = {result}"])


def load_template(template: str, name: str, attrs: dict, residual_load: str | None, indent: str = "    ", sizes=None):
    """The template's kernel with this layer's epilogue in its `{epilogue}` slot (compiled once per epilogue), and
    `sizes` (parameter name -> value) compiled in where that tells Triton their alignment (triton_source.compile_in)."""
    source = MODULE_HEADER + template.replace("{epilogue}", epilogue_lines(attrs, residual_load, indent).lstrip())
    return load_kernel(compile_in(source, sizes or {}), name)


def require_low_precision(x: torch.Tensor, tactic: str) -> None:
    """FP32 layers are refused: tl.dot would round them through TF32, which an FP32 engine must not do."""
    if x.dtype not in LOW_PRECISION:
        raise ValueError(f"{tactic} takes FP16/BF16 only (tl.dot would round {x.dtype} through TF32)")


def nhwc_output(out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The arena's buffer when it is a dense NHWC tensor of the right shape and dtype, else a fresh one."""
    if out is not None and tuple(out.shape) == shape and out.dtype == like.dtype and out.permute(0, 2, 3, 1).is_contiguous():
        return out
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def nhwc_rows(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] on channels-last memory as the [N*H*W, C] matrix the kernels index."""
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, t.shape[1])
