"""Concat and split written by the generated pointwise kernel (kernels/fused_pointwise.py): a join, or a copy of each
piece's view, as the kernel's only op.

torch.cat of NHWC pieces along channels copies each piece as rows of a few channels (48 bytes a row for
GhostNet's 24 + 24): on the H100 it moved GhostNet's 128x48x112x112 join at about 0.7 TB/s, 11% of the
model's batch-128 time. The generated kernel walks the joined tensor in its memory order and reads each
element from the piece that holds it, so every store is a full row. Timed against the reference like any
tactic: for pieces that are large contiguous blocks (an NCHW join at batch 1) torch.cat's copies win.

A channel split of an NHWC tensor is the same problem the other way round: each piece's clone is a strided
copy, 0.25 ms for cspresnet50's 128x128x56x56 split at batch 128 (about 0.8 TB/s). The generated copy reads
each piece's rows where they lie and writes them dense, in the input's memory order.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.program import FLOAT_DTYPES, Program
from kiln.engine.kernels.fused_pointwise import run_generated
from kiln.engine.kernels.registry import tactic
from kiln.engine.runtime.executor import arena_output

try:
    import triton
except ImportError:  # a CPU-only install: the generated tactic is not offered
    triton = None

# Each piece costs every element one pointer select: past this many, leave the join to torch.cat.
MAX_PIECES = 32


def _applies(layer, target) -> bool:
    return triton is not None and target.is_cuda and 2 <= len(layer.inputs) <= MAX_PIECES


def join_program(pieces: int, dim: int) -> Program:
    return Program(pieces, ({"kind": "concat", "op": "concat", "args": list(range(pieces)), "attrs": {"dim": dim}},), (pieces,))


@tactic("concat", "triton_generated", when=_applies)
def concat_generated(layer, inputs, run):
    dtype = inputs[0].dtype
    if dtype not in FLOAT_DTYPES or any(x.dtype != dtype for x in inputs):
        raise ValueError(f"the generated concat joins float pieces of one dtype, not {sorted({str(x.dtype) for x in inputs})}")
    dim = layer.attrs["dim"] % inputs[0].dim()
    (out,) = run_generated(join_program(len(inputs), dim), list(inputs), [dtype], [arena_output(run, 0)])
    return out


COPY = Program(1, ({"kind": "copy", "op": "copy", "args": [0], "attrs": {}},), (1,))


def _splits(layer, target) -> bool:
    return triton is not None and target.is_cuda


@tactic("split", "triton_generated", when=_splits)
def split_generated(layer, inputs, run):
    (x,) = inputs
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"the generated split copies float tensors, not {x.dtype}")
    parts = torch.split(x, run.shape(layer.attrs["sizes"]), layer.attrs["dim"])
    return tuple(run_generated(COPY, [p], [x.dtype], [arena_output(run, i)])[0] for i, p in enumerate(parts))
