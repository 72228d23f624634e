"""`squeeze_excite`: the gate of a squeeze-excite block, mean over H, W → FC → activations → FC → activations.

optimize/fuse_squeeze_excite.py makes this layer from the layers an SE module converts to
(EfficientNet, MobileNetV3, RegNetY, ReXNet, GhostNet...): a spatial mean (`reduce mean` over
dims 2, 3 or a 1x1 adaptive average pool), then two stages, each a 1x1 conv (`conv` or
`conv_epilogue` with its activation) or a `linear` (with its one-input epilogue), optionally
followed by a one-input pointwise program (a `fused_pointwise` or one element-wise layer the
activation did not fuse into the conv). Unfused these are three to five kernels of a few
microseconds each on a [N, C, 1, 1] tensor; at batch 1 they are launch-bound.

Inputs: [x, w1, b1 or None, w2, b2 or None]. Output: the gate, the last member's output
([N, C2, 1, 1] after convs, [N, C2] after linears).
attrs: "mean" ({"kind", "attrs"} of the mean layer), "stages" (two {"kind", "attrs", "after"}:
the stage layer's kind and attrs, and the program that followed it, or None), "out_dtype".

The reference runs every member through its own reference, which is by construction what the
separate layers computed. The generated one-kernel tactics live in triton_squeeze_excite.py;
`triton_unfused` here runs the mean and the two stages as before fusion (two generated GEMMs
with their activations in the epilogue), and the builder times it against them, so fusing never
forces a slower kernel.
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.ir.network import Layer
from kiln.engine.kernels.codegen.program import Program, evaluate
from kiln.engine.kernels.registry import REFERENCE, get_tactic, reference, tactic
from kiln.engine.kernels.triton_epilogue import LOW_PRECISION, epilogue_program, triton
from kiln.engine.runtime.executor import arena_output

IDENTITY = Program(1, (), (0,))
# Stage layer kinds, and the activation program each carries in its own attrs.
STAGE_ACTIVATIONS = {
    "conv": lambda attrs: IDENTITY,
    "conv_epilogue": lambda attrs: epilogue_program(attrs, residual=False),
    "linear": lambda attrs: Program.from_json(attrs["epilogue"]) if attrs.get("epilogue") else IDENTITY,
}


def compose(first: Program, then: Program) -> Program:
    """then(first(x)) for two one-input, one-output programs."""
    if first.num_inputs != 1 or then.num_inputs != 1 or len(first.outputs) != 1 or len(then.outputs) != 1:
        raise ValueError("only one-input, one-output programs compose into a squeeze-excite stage")
    base = 1 + len(first.ops)

    def renumber(value: int) -> int:
        return first.outputs[0] if value == 0 else value - 1 + base

    ops = tuple({**op, "args": [renumber(a) for a in op["args"]]} for op in then.ops)
    return Program(1, (*first.ops, *ops), (renumber(then.outputs[0]),))


def stage_program(stage: dict) -> Program:
    """The whole activation chain of one stage, as a program over the stage's FP32 matrix product plus bias."""
    program = STAGE_ACTIVATIONS[stage["kind"]](stage["attrs"])
    if stage.get("after"):
        program = compose(program, Program.from_json(stage["after"]))
    return program


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv's [Cout, Cin, 1, 1] weight (or a linear's [Cout, Cin]) as the [Cout, Cin] matrix."""
    return w.reshape(w.shape[0], -1)


def out_shape(layer: Layer, n: int, cout: int) -> tuple[int, ...]:
    return (n, cout) if layer.attrs["stages"][-1]["kind"] == "linear" else (n, cout, 1, 1)


def _member(kind: str, attrs: dict, inputs: list, run) -> torch.Tensor:
    layer = Layer(kind, kind, [None] * len(inputs), [""], attrs)
    return get_tactic(kind, REFERENCE).fn(layer, inputs, run)


@reference("squeeze_excite")
def squeeze_excite_reference(layer, inputs, run):
    x, w1, b1, w2, b2 = inputs
    mean = layer.attrs["mean"]
    value = _member(mean["kind"], mean["attrs"], [x], run)
    for stage, w, b in zip(layer.attrs["stages"], (w1, w2), (b1, b2)):
        # A conv_epilogue's fourth input is its residual, which a stage never has.
        value = _member(stage["kind"], stage["attrs"], [value, w, b] + ([None] if stage["kind"] == "conv_epilogue" else []), run)
        if stage.get("after"):
            (value,) = evaluate(Program.from_json(stage["after"]), [value], run)
    dtype = dtype_from_name(layer.attrs["out_dtype"])
    return value.to(dtype) if value.dtype != dtype else value


def _unfused_applies(layer, target) -> bool:
    return triton is not None and target.is_cuda and layer.precision in ("float16", "bfloat16")


@tactic("squeeze_excite", "triton_unfused", when=_unfused_applies)
def squeeze_excite_unfused(layer, inputs, run):
    """The mean on PyTorch's kernel, then each stage as one generated GEMM with its activations in the epilogue:
    the kernels the unfused layers ran at best, for the builder to time against the one-kernel tactics."""
    from kiln.engine.kernels.triton_gemm import CONFIGS, gemm  # it imports the runtime, which imports this package

    x, w1, b1, w2, b2 = inputs
    if x.dtype not in LOW_PRECISION:
        raise ValueError(f"triton_unfused takes FP16/BF16 only (tl.dot would round {x.dtype} through TF32)")
    value = x.mean(dim=(2, 3))
    stages = layer.attrs["stages"]
    for i, (stage, w, b) in enumerate(zip(stages, (w1, w2), (b1, b2))):
        program = stage_program(stage)
        out = arena_output(run, 0) if i == len(stages) - 1 else None
        rows = out.view(out.shape[0], -1) if out is not None and out.is_contiguous() else None
        value = gemm(value, as_matrix(w), b, [], program if program.ops else None, CONFIGS["triton_gemm_64"], rows)
    dtype = dtype_from_name(layer.attrs["out_dtype"])
    value = value.reshape(out_shape(layer, x.shape[0], value.shape[1]))
    return value.to(dtype) if value.dtype != dtype else value
