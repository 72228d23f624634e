"""The squeeze-excite gate kernel compiles for an H100 (sm_90) on a machine without a GPU, with activation chains
from the op vocabulary.

Triton's interpreter, which runs the numeric tests on a CPU, accepts programs the compiler refuses;
compiling through ptxas here catches those before a GPU run does."""


from kiln.engine.kernels import triton_squeeze_excite
from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.codegen.triton_source import load_kernel
from tests.helpers import compile_for_sm90, run_outside_the_interpreter, skip_unless_triton_compiles_ahead_of_time

skip_unless_triton_compiles_ahead_of_time()


def _unary(op: str) -> Program:
    return Program(1, ({"kind": "unary", "op": op, "args": [0], "attrs": {"op": op}},), (1,))


# One compile (each costs seconds): the strided H/W branch, a split grid, a libdevice call and a multi-op chain.
PROGRAMS = (_unary("gelu"), _unary("hardsigmoid"))
BLOCKS = {"BLOCK_C": 16, "BLOCK_HW": 256, "BLOCK_H": 256, "BLOCK_O": 32, "FLAT_HW": False, "SPLIT": 4}


def _argument_type(name: str) -> str:
    if name in ("x", "w1", "b1", "w2", "b2", "out"):
        return "*fp16"
    return "i64" if "_s" in name else "i32"


def compile_all() -> None:
    kernel = load_kernel(triton_squeeze_excite.kernel_source(*PROGRAMS), "squeeze_excite_kernel")
    compile_for_sm90(kernel, {"HAS_B1": True, "HAS_B2": False, **BLOCKS}, _argument_type)


def test_gate_kernel_compiles_for_sm90(tmp_path):
    run_outside_the_interpreter(__name__, tmp_path)


if __name__ == "__main__":
    compile_all()
