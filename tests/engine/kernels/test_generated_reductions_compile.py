"""The generated reduction kernels compile for an H100 (sm_90) on a machine without a GPU (one of each template:
both group-norm kernels, the whole-row template that softmax shares, the tiled reduction).

Triton's interpreter, which runs the numeric tests on a CPU, accepts programs the compiler
refuses (a loop variable that changes shape, a pointer block of another shape than its
value); compiling through ptxas here catches those before a GPU run does.
"""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kiln.engine.kernels import triton_group_norm, triton_norm, triton_reduce
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_reduction import IDENTITY

triton = pytest.importorskip("triton")
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction
except ImportError:  # pragma: no cover - an older Triton
    pytest.skip("this Triton cannot compile ahead of time", allow_module_level=True)

F16 = torch.float16
ADD = Program(2, ({"kind": "binary", "op": "add", "args": [0, 1], "attrs": {"op": "add"}},), (2, 2))
SILU = Program(1, ({"kind": "unary", "op": "silu", "args": [0], "attrs": {"op": "silu"}},), (1,))
BLOCKS = {"BLOCK": 256, "SPLIT_P2": 16, "BLOCK_R": 16, "BLOCK_D": 64, "BLOCK_O": 32}
SOURCES = {
    "group_norm_stats_nhwc": (triton_group_norm.stats_source(ADD, [F16, F16], [F16], "channels_inner"), "group_norm_stats"),
    "group_norm_apply_batch": (
        triton_group_norm.apply_source(IDENTITY, SILU, [F16], [], (True, True), "batch", F16),
        "group_norm_apply",
    ),
    "reduce_kept_inner": (triton_reduce.kernel_source(ADD, IDENTITY, "amax", 1, 2, False, [F16, F16], [], [F16, F16]), "reduce_kernel"),
    "norm_rows": (triton_norm.fused_norm_source(ADD, SILU, ([F16, F16], [], [F16, F16]), 2, False, (True, True)), "norm_rows"),
}


def _argument_type(name: str) -> str:
    if "_st" in name:
        return "i64"
    if name == "part":
        return "*fp32"
    if name.startswith(("pin", "ein", "out", "hout", "weight", "bias")):
        return "*fp16"
    return "fp32" if name == "eps" else "i32"


def compile_all() -> None:
    for source, name in SOURCES.values():
        loaded = load_kernel(source, name)
        fn = loaded if isinstance(loaded, JITFunction) else JITFunction(loaded.fn)
        signature, constants = {}, {}
        for p in inspect.signature(fn.fn).parameters.values():
            if "constexpr" in str(p.annotation):
                signature[p.name], constants[p.name] = "constexpr", BLOCKS[p.name]
            else:
                signature[p.name] = _argument_type(p.name)
        triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32))


def test_generated_kernels_compile_for_sm90(tmp_path):
    # Its own process: under TRITON_INTERPRET (set by tests/conftest.py on a CPU) tl's functions run as numpy.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), KILN_CACHE_DIR=str(tmp_path))
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", __name__], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]


if __name__ == "__main__":
    compile_all()
