"""The generated reduction kernels compile for an H100 (sm_90) on a machine without a GPU (one of each template:
both group-norm kernels, the whole-row template that softmax shares, the tiled reduction).

Triton's interpreter, which runs the numeric tests on a CPU, accepts programs the compiler
refuses (a loop variable that changes shape, a pointer block of another shape than its
value); compiling through ptxas here catches those before a GPU run does.
"""

import inspect

import torch

from kiln.engine.kernels import triton_group_norm, triton_norm, triton_reduce, triton_reduce_rows
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_reduction import IDENTITY
from tests.helpers import compile_for_sm90, run_outside_the_interpreter, skip_unless_triton_compiles_ahead_of_time

skip_unless_triton_compiles_ahead_of_time()
from triton.runtime.jit import JITFunction  # noqa: E402

F16 = torch.float16
ADD = Program(2, ({"kind": "binary", "op": "add", "args": [0, 1], "attrs": {"op": "add"}},), (2, 2))
SILU = Program(1, ({"kind": "unary", "op": "silu", "args": [0], "attrs": {"op": "silu"}},), (1,))
QUANTIZE = {
    qdtype: Program(1, ({"kind": "quantize", "op": "quantize", "args": [0], "attrs": {"scale": 0.03, "qdtype": qdtype}},), (1, 0))
    for qdtype in ("int8", "fp8")
}
# F.normalize as fusion builds it: cast to FP32 -> (the norm) -> cast to FP16, clamp_min, the row divided by that.
TO_FP32 = Program(1, ({"kind": "cast", "op": "cast", "args": [0], "attrs": {"dtype": "float32"}},), (1,))
CLAMP_DIVIDE = Program(
    2,
    (
        {"kind": "cast", "op": "cast", "args": [0], "attrs": {"dtype": "float16"}},
        {"kind": "unary", "op": "clamp", "args": [2], "attrs": {"op": "clamp", "min": 1e-12, "max": None}},
        {"kind": "binary", "op": "div", "args": [1, 3], "attrs": {"op": "div"}},
    ),
    (4,),
)
BLOCKS = {"BLOCK": 256, "SPLIT_P2": 16, "BLOCK_R": 16, "BLOCK_D": 64, "BLOCK_O": 32}
SOURCES = {
    "group_norm_stats_nhwc": (triton_group_norm.stats_source(ADD, [F16, F16], [F16], "channels_inner"), "group_norm_stats"),
    "group_norm_apply_batch": (
        triton_group_norm.apply_source(IDENTITY, SILU, [F16], [], (True, True), "batch", (F16,)),
        "group_norm_apply",
    ),
    "reduce_kept_inner": (triton_reduce.kernel_source(ADD, IDENTITY, "amax", 1, 2, False, [F16, F16], [], [F16, F16]), "reduce_kernel"),
    "reduce_rows_normalize": (
        triton_reduce_rows.kernel_source(TO_FP32, CLAMP_DIVIDE, ([F16], [F16], [F16]), 3, "norm2", torch.float32),
        "reduce_rows",
    ),
    "norm_rows": (triton_norm.fused_norm_source(ADD, SILU, ([F16, F16], [], [F16, F16]), 2, False, (True, True)), "norm_rows"),
    # A LayerNorm writing its row and the 8-bit copy an INT8/FP8 linear reads (out0 8-bit, out1 FP16).
    "norm_rows_int8": (
        triton_norm.fused_norm_source(IDENTITY, QUANTIZE["int8"], ([F16], [], [torch.int8, F16]), 2, False, (True, True)),
        "norm_rows",
    ),
    "norm_rows_fp8": (
        triton_norm.fused_norm_source(IDENTITY, QUANTIZE["fp8"], ([F16], [], [torch.float8_e4m3fn, F16]), 2, False, (True, True)),
        "norm_rows",
    ),
}
EIGHT_BIT_OUT = {"norm_rows_int8": "*i8", "norm_rows_fp8": "*fp8e4nv"}


def _argument_type(name: str) -> str:
    if "_st" in name:
        return "i64"
    if name == "part":
        return "*fp32"
    if name.startswith(("pin", "ein", "out", "hout", "weight", "bias")):
        return "*fp16"
    return "fp32" if name == "eps" else "i32"


def compile_all() -> None:
    for key, (source, name) in SOURCES.items():
        loaded = load_kernel(source, name)
        fn = loaded if isinstance(loaded, JITFunction) else JITFunction(loaded.fn)
        constexprs = [p.name for p in inspect.signature(fn.fn).parameters.values() if "constexpr" in str(p.annotation)]
        types = {"out0": EIGHT_BIT_OUT[key]} if key in EIGHT_BIT_OUT else {}
        compile_for_sm90(fn, {p: BLOCKS[p] for p in constexprs}, lambda p, types=types: types.get(p) or _argument_type(p))


def test_generated_kernels_compile_for_sm90(tmp_path):
    run_outside_the_interpreter(__name__, tmp_path)


if __name__ == "__main__":
    compile_all()
