"""The FP16 implicit-GEMM conv kernel compiles for an H100 (sm_90) on a machine without a GPU.

Triton's interpreter, which runs the numeric tests on a CPU, accepts programs the compiler refuses;
compiling through ptxas here catches those before a GPU run does."""


from kiln.engine.kernels import triton_conv
from kiln.engine.kernels.triton_epilogue import load_template
from tests.helpers import compile_for_sm90, run_outside_the_interpreter, skip_unless_triton_compiles_ahead_of_time

skip_unless_triton_compiles_ahead_of_time()

# leaky_relu after a residual add, so the generated epilogue and its residual load are in the text; both K loops
# (TAP_LOOP on and off), at the smallest config's tile, to keep ptxas quick.
ATTRS = {"activation": "leaky_relu", "activation_attrs": {"alpha": 0.01}}


def _argument_type(name: str) -> str:
    return "*fp16" if name.endswith("_ptr") else "i32"


def compile_all() -> None:
    kernel = load_template(triton_conv.TEMPLATE, "conv_kernel", ATTRS, triton_conv.RESIDUAL_LOAD)
    block_m, block_n, block_k, _, _ = triton_conv.CONFIGS["triton_conv_64x64"]
    for tap_loop in (True, False):
        constants = {"HAS_BIAS": True, "TAP_LOOP": tap_loop, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
        compile_for_sm90(kernel, {**constants, "WIDE_INDEX": False}, _argument_type)


def test_conv_kernel_compiles_for_sm90(tmp_path):
    run_outside_the_interpreter(__name__, tmp_path)


if __name__ == "__main__":
    compile_all()
