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

Pieces. A program that joins pieces (a `concat` op, only ever at the head of a group) reads each element
of the joined tensor from the piece that holds its index along the joined dim: the piece's own strides,
at that index less the piece's start, chosen by comparing the index with the pieces' ends (passed per
call). One pointer select per piece and one load per element: the joined tensor is never written.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.codegen.program import FLOAT_DTYPES, INDEXED_KINDS, Program, concat_pieces, emit, evaluate
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


def _joins_pieces(layer, target) -> bool:
    return _applies(layer, target) and bool(concat_pieces(Program.from_json(layer.attrs["program"])))


@tactic("fused_pointwise", "triton_joined_first", when=_joins_pieces)
def fused_pointwise_joined_first(layer, inputs, run):
    """The concat written first (torch.cat), then the rest of the group as one generated kernel: two passes,
    the floor the in-place read of every piece must beat. A DenseNet-121 join of ~25 pieces costs the
    one-kernel form a pointer select per piece for every element, which may cost more than the extra pass."""
    program, joined_inputs = without_concats(Program.from_json(layer.attrs["program"]), list(inputs))
    dtypes = [dtype_from_name(d) for d in layer.attrs["out_dtypes"]]
    outs = run_generated(program, joined_inputs, dtypes, [arena_output(run, i) for i in range(len(dtypes))])
    return outs[0] if len(outs) == 1 else tuple(outs)


def without_concats(program: Program, inputs: list[torch.Tensor]) -> tuple[Program, list[torch.Tensor]]:
    """The same program with each concat op's result made an input of its own (joined here by torch.cat in the
    pieces' memory format), its pieces dropped from the inputs, and every value renumbered to match."""
    pieces = concat_pieces(program)
    kept = [i for i in range(program.num_inputs) if i not in pieces]
    joins = [k for k, op in enumerate(program.ops) if op["kind"] in INDEXED_KINDS]
    number = {i: n for n, i in enumerate(kept)}
    new_inputs = [inputs[i] for i in kept]
    for k in joins:
        op = program.ops[k]
        parts = [inputs[i] for i in op["args"]]
        joined = torch.cat(parts, op["attrs"]["dim"])
        if joined.dim() == 4 and all(x.is_contiguous(memory_format=torch.channels_last) for x in parts):
            joined = joined.contiguous(memory_format=torch.channels_last)
        number[program.num_inputs + k] = len(new_inputs)
        new_inputs.append(joined)
    ops = []
    for k, op in enumerate(program.ops):
        if k in joins:
            continue
        number[program.num_inputs + k] = len(new_inputs) + len(ops)
        ops.append({**op, "args": [number[a] if a is not None else None for a in op["args"]]})
    return Program(len(new_inputs), tuple(ops), tuple(number[o] for o in program.outputs)), new_inputs


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
    pieces = concat_pieces(program)
    joined = _joined_shapes(program, inputs)
    whole = [x for i, x in enumerate(inputs) if i not in pieces]
    shape = torch.broadcast_shapes(*(x.shape for x in whole), *joined.values())
    if any(list(s) != list(shape) for s in joined.values()):
        raise ValueError(f"fused_pointwise joins pieces into {[list(s) for s in joined.values()]}, not its whole shape {list(shape)}")
    # The output takes the memory order of an input of its whole shape, else that of the pieces it joins.
    if pieces and not any(tuple(x.shape) == tuple(shape) for x in whole):
        fmt = _pieces_format([inputs[i] for i in pieces])
    else:
        fmt = _memory_format(max(whole, key=lambda x: (tuple(x.shape) == tuple(shape), x.numel())), shape)
    outs = []
    for dtype, buf in zip(out_dtypes, planned):
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or not buf.is_contiguous(memory_format=fmt):
            buf = torch.empty(shape, dtype=dtype, device=inputs[0].device, memory_format=fmt)
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
    for i, x in enumerate(inputs):
        # A piece is read through its own strides, at the joined index shifted to the piece's start.
        expanded = x.stride() if i in pieces else x.expand(shape).stride()
        strides = [expanded[d] if d is not None else 0 for d in order]
        in_strides.append(strides)
        dense_flags.append(i not in pieces and walked(strides) == dense)
    axes = tuple(order.index(program.ops[k]["attrs"]["dim"]) for k in joined)
    ends = [end for k in joined for end in _piece_ends(program.ops[k], inputs)]
    kernel = _kernel(program, [x.dtype for x in inputs], out_dtypes, len(sizes), axes)
    block = 1024 if numel >= 1 << 16 else max(128, triton.next_power_of_2(min(numel, 1024)))
    args = [*inputs, *outs, numel, *sizes, *(s for st in in_strides for s in st), *ends]
    flags = {f"DENSE{i}": f for i, f in enumerate(dense_flags)}
    grid = (triton.cdiv(numel, block),)
    kernel[grid](*args, BLOCK=block, INDEX64=numel >= 2**31 - block, **flags, num_warps=4 if block >= 512 else 2)
    return outs


def _joined_shapes(program: Program, inputs: list[torch.Tensor]) -> dict[int, list[int]]:
    """Op number -> the shape each concat of the program makes from its pieces."""
    joined = {}
    for k, op in enumerate(program.ops):
        if op["kind"] in INDEXED_KINDS:
            first = list(inputs[op["args"][0]].shape)
            dim = op["attrs"]["dim"]
            joined[k] = [*first[:dim], sum(inputs[i].shape[dim] for i in op["args"]), *first[dim + 1 :]]
    return joined


def _piece_ends(op: dict, inputs: list[torch.Tensor]) -> list[int]:
    """Where each piece but the last ends along the joined dim (the last runs to the end)."""
    ends, end = [], 0
    for i in op["args"][:-1]:
        end += inputs[i].shape[op["attrs"]["dim"]]
        ends.append(end)
    return ends


def _pieces_format(pieces: list[torch.Tensor]) -> torch.memory_format:
    """A join of NHWC pieces is written NHWC (the layout pass marks it so, as it marks a concat of them)."""
    nhwc = all(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) for p in pieces)
    return torch.channels_last if nhwc and not all(p.is_contiguous() for p in pieces) else torch.contiguous_format


def _memory_format(template: torch.Tensor, shape) -> torch.memory_format:
    if len(shape) == 4 and tuple(template.shape) == tuple(shape) and not template.is_contiguous():
        # A channel slice of an NHWC tensor (a split's piece) is NHWC too, though not dense.
        n, c, h, w = template.stride()
        if template.is_contiguous(memory_format=torch.channels_last) or c == 1 and c < w <= h <= n:
            return torch.channels_last
    return torch.contiguous_format


def _dense_strides(sizes: list[int]) -> list[int]:
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= size
    return strides[::-1]


_KERNELS: dict[tuple, object] = {}


def _kernel(program: Program, in_dtypes, out_dtypes, rank: int, axes: tuple[int, ...] = ()):
    key = (repr(program.to_json()), tuple(in_dtypes), tuple(out_dtypes), rank, axes)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = load_kernel(kernel_source(program, in_dtypes, out_dtypes, rank, axes), "fused_pointwise_kernel")
    return kernel


def kernel_source(program: Program, in_dtypes, out_dtypes, rank: int, axes: tuple[int, ...] = ()) -> str:
    """The Triton module text for one program at given input/output dtypes and rank.

    `axes` are, for each concat of the program in op order, the position of its dim in the walk order."""
    n_in, n_out = len(in_dtypes), len(out_dtypes)
    pieces = concat_pieces(program)
    joins = [k for k, op in enumerate(program.ops) if op["kind"] in INDEXED_KINDS]
    ins = [f"in{i}" for i in range(n_in)]
    outs = [f"out{i}" for i in range(n_out)]
    sizes = [f"size{d}" for d in range(rank)]
    strides = [f"in{i}_stride{d}" for i in range(n_in) for d in range(rank)]
    ends = [f"join{k}_end{j}" for k in joins for j in range(len(program.ops[k]["args"]) - 1)]
    flags = [f"DENSE{i}: tl.constexpr" for i in range(n_in)]
    signature = ", ".join([*ins, *outs, "numel", *sizes, *strides, *ends, "BLOCK: tl.constexpr", "INDEX64: tl.constexpr", *flags])
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
        if i in pieces:
            loads.append(None)
            continue
        strided = " + ".join(f"idx{d} * in{i}_stride{d}" for d in range(rank))
        body += [f"if DENSE{i}:", f"    off{i} = flat", "else:", f"    off{i} = {strided}"]
        loads.append(_loaded(f"in{i} + off{i}", dtype))
    indexed = {}
    for k, axis in zip(joins, axes):
        body += _join_lines(k, program.ops[k]["args"], in_dtypes, rank, axis)
        indexed[k] = (_loaded(f"join{k}_ptr", in_dtypes[program.ops[k]["args"][0]]), in_dtypes[program.ops[k]["args"][0]] == torch.bool)
    lines, results = emit(program, loads, [d == torch.bool for d in in_dtypes], indexed=indexed)
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


def _loaded(pointer: str, dtype: torch.dtype) -> str:
    load = f"tl.load({pointer}, mask=mask, other=0)"
    return f"{load}.to(tl.float32)" if dtype in FLOAT_DTYPES else f"{load} != 0"


def _join_lines(k: int, args: list[int], in_dtypes, rank: int, axis: int) -> list[str]:
    """`join{k}_ptr`: for each element, the address in the piece that holds its index along the joined axis.

    Pieces are chosen by comparing the index with the pieces' ends: one pointer select per piece and
    a single load, so the joined tensor is read once, where its pieces lie, and never written."""
    if len({in_dtypes[i] for i in args}) != 1:
        raise ValueError(f"a generated concat reads pieces of one dtype, not {[str(in_dtypes[i]) for i in args]}")

    def address(j: int, i: int) -> str:
        along = f"idx{axis}" if j == 0 else f"(idx{axis} - join{k}_end{j - 1})"
        terms = [f"{along if d == axis else f'idx{d}'} * in{i}_stride{d}" for d in range(rank)]
        return f"in{i} + " + " + ".join(terms)

    lines = [f"join{k}_ptr = {address(len(args) - 1, args[-1])}"]
    for j in reversed(range(len(args) - 1)):
        lines.append(f"join{k}_ptr = tl.where(idx{axis} < join{k}_end{j}, {address(j, args[j])}, join{k}_ptr)")
    return lines
