"""`fused_pointwise`: a connected group of element-wise layers as one generated Triton kernel.

optimize/fuse_pointwise.py groups the layers and stores their arithmetic as a program
(codegen/program.py) in attrs["program"]; the reference tactic runs that program op by op
through each op's own reference, and the Triton tactic renders it into one kernel: each
input is read once, every intermediate stays in registers, each output is written once.
A group of five element-wise layers (bias, GELU, layer scale, residual add, cast) thus moves
its activation through memory twice instead of ten times, and costs one launch instead of five.

Indexing. The kernel walks the output in its memory order (NHWC for a channels-last output),
one flat index per element. An input whose strides in that order are the output's own dense
strides is read at the flat index; any other input (a broadcast [C] bias, a [N, C, 1, 1]
squeeze-excite scale, a transposed view) is read through its strides, computed from the flat
index by division by the sizes. Both forms are chosen per call from the real tensors, so views
and broadcasts cost index arithmetic, never a copy.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.codegen.program import FLOAT_DTYPES, Program, emit, evaluate
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.registry import reference, tactic
from kiln.engine.runtime.executor import arena_output

try:
    import triton
except ImportError:  # a CPU-only install: the generated tactic is not offered
    triton = None

_DTYPE_TEXT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.bool: "bool"}


@reference("fused_pointwise")
def fused_pointwise_reference(layer, inputs, run):
    program = Program.from_json(layer.attrs["program"])
    results = evaluate(program, inputs, run)
    dtypes = [dtype_from_name(d) for d in layer.attrs["out_dtypes"]]
    outs = [r.to(d) if r.dtype != d else r for r, d in zip(results, dtypes)]
    return outs[0] if len(outs) == 1 else tuple(outs)


def _applies(layer, target) -> bool:
    return triton is not None and target.is_cuda


@tactic("fused_pointwise", "triton_generated", when=_applies)
def fused_pointwise_triton(layer, inputs, run):
    program = Program.from_json(layer.attrs["program"])
    dtypes = [dtype_from_name(d) for d in layer.attrs["out_dtypes"]]
    outs = run_generated(program, inputs, dtypes, [arena_output(run, i) for i in range(len(dtypes))])
    return outs[0] if len(outs) == 1 else tuple(outs)


def write_over(program: Program, y: torch.Tensor, extras: list, run) -> torch.Tensor:
    """program(y, *extras) written over y, the caller's own fresh output: one generated pass on the GPU
    (the epilogue a library conv or GEMM could not fuse), the ops' references elsewhere."""
    if triton is None or not y.is_cuda:
        (out,) = evaluate(program, [y, *extras], run)
        return out.to(y.dtype)
    (out,) = run_generated(program, [y, *extras], [y.dtype], [y])
    return out


def run_generated(program: Program, inputs: list[torch.Tensor], out_dtypes: list[torch.dtype], planned: list) -> list[torch.Tensor]:
    """Launch the program's generated kernel; outputs go to `planned` buffers where they fit, else fresh ones."""
    shape = torch.broadcast_shapes(*(x.shape for x in inputs))
    template = max(inputs, key=lambda x: (tuple(x.shape) == tuple(shape), x.numel()))
    fmt = _memory_format(template, shape)
    outs = []
    for dtype, buf in zip(out_dtypes, planned):
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or not buf.is_contiguous(memory_format=fmt):
            buf = torch.empty(shape, dtype=dtype, device=template.device, memory_format=fmt)
        outs.append(buf)
    numel = outs[0].numel()
    if numel == 0:
        return outs
    # Memory order of the output, outermost first; rank-0 outputs walk one element.
    order = sorted(range(len(shape)), key=lambda d: -outs[0].stride(d)) or [None]
    sizes = [shape[d] if d is not None else 1 for d in order]
    dense = _dense_strides(sizes)

    def walked(strides) -> list[int]:
        # A size-1 dim is only ever index 0: its stride means nothing, so it counts as dense.
        return [st if d is not None and size != 1 else dn for d, size, st, dn in zip(order, sizes, strides, dense)]

    if any(walked([o.stride(d) if d is not None else 1 for d in order]) != dense for o in outs):
        raise ValueError("fused_pointwise needs outputs dense in one memory order")
    in_strides, dense_flags = [], []
    for x in inputs:
        expanded = x.expand(shape).stride()
        strides = [expanded[d] if d is not None else 0 for d in order]
        in_strides.append(strides)
        dense_flags.append(walked(strides) == dense)
    kernel = _kernel(program, [x.dtype for x in inputs], out_dtypes, len(sizes))
    block = 1024 if numel >= 1 << 16 else max(128, triton.next_power_of_2(min(numel, 1024)))
    args = [*inputs, *outs, numel, *sizes, *(s for st in in_strides for s in st)]
    flags = {f"DENSE{i}": f for i, f in enumerate(dense_flags)}
    grid = (triton.cdiv(numel, block),)
    kernel[grid](*args, BLOCK=block, INDEX64=numel >= 2**31 - block, **flags, num_warps=4 if block >= 512 else 2)
    return outs


def _memory_format(template: torch.Tensor, shape) -> torch.memory_format:
    if len(shape) == 4 and tuple(template.shape) == tuple(shape) and template.is_contiguous(memory_format=torch.channels_last):
        if not template.is_contiguous():
            return torch.channels_last
    return torch.contiguous_format


def _dense_strides(sizes: list[int]) -> list[int]:
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= size
    return strides[::-1]


_KERNELS: dict[tuple, object] = {}


def _kernel(program: Program, in_dtypes, out_dtypes, rank: int):
    key = (repr(program.to_json()), tuple(in_dtypes), tuple(out_dtypes), rank)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = load_kernel(kernel_source(program, in_dtypes, out_dtypes, rank), "fused_pointwise_kernel")
    return kernel


def kernel_source(program: Program, in_dtypes, out_dtypes, rank: int) -> str:
    """The Triton module text for one program at given input/output dtypes and rank."""
    n_in, n_out = len(in_dtypes), len(out_dtypes)
    ins = [f"in{i}" for i in range(n_in)]
    outs = [f"out{i}" for i in range(n_out)]
    sizes = [f"size{d}" for d in range(rank)]
    strides = [f"in{i}_stride{d}" for i in range(n_in) for d in range(rank)]
    flags = [f"DENSE{i}: tl.constexpr" for i in range(n_in)]
    signature = ", ".join([*ins, *outs, "numel", *sizes, *strides, "BLOCK: tl.constexpr", "INDEX64: tl.constexpr", *flags])
    body = [
        "pid = tl.program_id(0)",
        "if INDEX64:",
        "    flat = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "else:",
        "    flat = pid * BLOCK + tl.arange(0, BLOCK)",
        "mask = flat < numel",
        "rest = flat",
    ]
    # Multi-index of each element in the output's memory order, innermost first; unused ones are dead code.
    for d in reversed(range(rank)):
        if d == 0:
            body.append("idx0 = rest")
        else:
            body += [f"idx{d} = rest % size{d}", f"rest = rest // size{d}"]
    loads = []
    for i, dtype in enumerate(in_dtypes):
        strided = " + ".join(f"idx{d} * in{i}_stride{d}" for d in range(rank))
        body += [f"if DENSE{i}:", f"    off{i} = flat", "else:", f"    off{i} = {strided}"]
        load = f"tl.load(in{i} + off{i}, mask=mask, other=0)"
        loads.append(f"{load}.to(tl.float32)" if dtype in FLOAT_DTYPES else f"{load} != 0")
    lines, results = emit(program, loads, [d == torch.bool for d in in_dtypes])
    body += lines
    for k, (name, dtype) in enumerate(zip(results, out_dtypes)):
        value = f"{name}.to(tl.int1)" if dtype == torch.bool else name
        body.append(f"tl.store(out{k} + flat, {value}.to(out{k}.dtype.element_ty), mask=mask)")
    text = "\n".join("    " + line for line in body)
    header = ", ".join(_DTYPE_TEXT.get(d, str(d)) for d in in_dtypes)
    return (
        f"# Generated by kiln (kernels/fused_pointwise.py) for inputs ({header}); do not edit.\n"
        "import triton\nimport triton.language as tl\nfrom triton.language.extra import libdevice\n\n\n"
        f"@triton.jit\ndef fused_pointwise_kernel({signature}):\n{text}\n"
    )
