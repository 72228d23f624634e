"""The depthwise conv + norm kernel compiles for an H100 (sm_90) on a machine without a GPU.

Triton's interpreter, which runs the numeric tests on a CPU, accepts programs the compiler refuses;
compiling through ptxas here catches those before a GPU run does."""


from kiln.engine.kernels import triton_depthwise_norm
from kiln.engine.kernels.codegen.triton_source import load_kernel
from tests.helpers import compile_for_sm90, run_outside_the_interpreter, skip_unless_triton_compiles_ahead_of_time

skip_unless_triton_compiles_ahead_of_time()

# A GELU after the conv and an affine LayerNorm, so the generated conv epilogue and the norm lines are both in the
# text. A 3x3 filter over 32 channels: ConvNeXt's 7x7 over 1024 compiles the same text but takes ptxas ~45 s here.
CONV = {"activation": "gelu"}
CONSTANTS = {"KH": 3, "KW": 3, "HAS_BIAS": True, "BLOCK_P": 4, "BLOCK_D": 32, "WIDE_INDEX": False}


def _argument_type(name: str) -> str:
    if name.endswith("_ptr") or name in ("weight", "bias"):
        return "*fp16"
    return "fp32" if name == "eps" else "i32"


def compile_all() -> None:
    kernel = load_kernel(triton_depthwise_norm.kernel_source(CONV, False, (True, True)), "depthwise_norm_kernel")
    compile_for_sm90(kernel, CONSTANTS, _argument_type)


def test_depthwise_norm_kernel_compiles_for_sm90(tmp_path):
    run_outside_the_interpreter(__name__, tmp_path)


if __name__ == "__main__":
    compile_all()
