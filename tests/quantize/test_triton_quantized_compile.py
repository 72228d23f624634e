"""The 8-bit GEMM template compiles for an H100 (sm_90) on a machine without a GPU, and its epilogue is the
arithmetic quantized.quantize_text promises, checked in the PTX:

- no IEEE division (the requantize multiplies by the scale's FP32 reciprocal) and no rint (ROUND_HALF_EVEN);
- every FP32 to e4m3 conversion saturates (cvt.rn.satfinite), which is what lets the FP8 requantize drop its ±448
  clamp and stay bit-exact with the reference: a Triton that converted otherwise would fail here, not on a GPU.

The epilogue is FC1's (dequantize, bias, GELU, requantize) with an odd output zero point and an 8-bit residual
with a zero point, so every optional line of the tail is in the text. Small tiles keep ptxas quick."""

import inspect
import re

from tests.helpers import run_outside_the_interpreter, skip_unless_triton_compiles_ahead_of_time

skip_unless_triton_compiles_ahead_of_time()

ACTIVATION = {"activation": "gelu", "activation_attrs": {"approximate": "none"}}
INT8 = {"qdtype": "int8", "x_scale": 0.02, "out_dtype": "int8", "out_scale": 0.07, "out_zero_point": 3, "res_scale": 0.05}
FP8 = {"qdtype": "fp8", "x_scale": 0.02, "out_dtype": "float8_e4m3fn", "out_scale": 0.07}
STORAGE = {"int8": "*i8", "fp8": "*fp8e4nv"}


def compile_ptx(attrs: dict) -> str:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kiln.engine.ir.network import Layer
    from kiln.engine.kernels.triton_quantized_common import epilogue_args
    from kiln.engine.kernels.triton_quantized_gemm import kernel_for

    attrs = {**attrs, **ACTIVATION, "res_zero_point": 2}
    layer = Layer("qlinear", "q", ["x", "w", "b", "r", "s"], ["y"], attrs)
    kernel = kernel_for(layer, residual=True)
    args = epilogue_args(layer, torch.ones(8), torch.ones(8), torch.ones(8))
    constants = {k: v for k, v in args.items() if k.isupper()}
    constants.update(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, WIDE_INDEX=False)
    storage = STORAGE[attrs["qdtype"]]
    pointers = {"a_ptr": storage, "b_ptr": storage, "scale_ptr": "*fp32", "bias_ptr": "*fp16", "res_ptr": "*i8"}
    pointers["c_ptr"] = STORAGE["fp8" if attrs["out_dtype"] == "float8_e4m3fn" else "int8"]
    floats = {"x_scale", "out_inv_scale", "out_qmin", "out_qmax", "res_scale", "res_zp"}

    def argument_type(name: str) -> str:
        return pointers.get(name) or ("fp32" if name in floats else "i32")

    signature = {p: "constexpr" if p in constants else argument_type(p) for p in inspect.signature(kernel.fn).parameters}
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32), options={"num_stages": 2})
    return compiled.asm["ptx"]


def check_all() -> None:
    for attrs in (INT8, FP8):
        ptx = compile_ptx(attrs)
        assert "div.rn.f32" not in ptx and "div.full" not in ptx, "the requantize divides: it should multiply by 1 / scale"
        assert "cvt.rni.f32.f32" not in ptx, "rint is in the epilogue: it should round by adding ROUND_HALF_EVEN"
        e4m3 = re.findall(r"cvt\.[\w.]*e4m3x2\.f32", ptx)
        if attrs is FP8:
            assert e4m3 and all(c == "cvt.rn.satfinite.e4m3x2.f32" for c in e4m3), set(e4m3)


def test_8_bit_gemm_epilogue_compiles_for_sm90_without_division_or_unsaturated_casts(tmp_path):
    run_outside_the_interpreter(__name__, tmp_path)


if __name__ == "__main__":
    check_all()
