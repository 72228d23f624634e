"""What the 8-bit Triton templates share: the dequantize → generated epilogue → cast/requantize tail,
the tile configurations the builder times, and when a template applies.

The tail runs on the FP32 tile before the single write, in the order of the reference
(quantize/numerics.finish): acc * (w_scale[c] * x_scale), + bias, then the layer's generated
epilogue (residual add, activation: triton_epilogue.load_template fills `{epilogue}` from the op
vocabulary), then either a cast to the output dtype or a requantization to int8/e4m3 with the
readers' scale (kernels/quantized.quantize_text, the arithmetic every 8-bit writer shares).

Per output element the tail is what the arithmetic needs and no more: the requantize multiplies by the FP32
reciprocal of the readers' scale, computed once on the host (numerics.reciprocal), where an IEEE division was
about ten instructions; its rounding is one FP32 add (quantized.ROUND_HALF_EVEN); a zero point is a compile-time
constant (OUT_ZP), so the usual 0 costs nothing; a float residual is loaded as it is, only an 8-bit one is
dequantized. The large FC1-style epilogues run after the main loop, not overlapped with it, so each FP32
instruction per element is paid in full (benchmarks/kernel_sweep.py qepi times them).
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.quantized import quantize_text
from kiln.engine.kernels.triton_epilogue import fusable_activation, triton
from kiln.quantize.numerics import reciprocal

# Tile configurations (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); each is its own tactic,
# timed per layer by the builder. From the H100 sweep (benchmarks/kernel_sweep.py qgemm): 128x128x64
# with 4 stages won most BERT-base and resnet50 1x1 shapes, 256x128x128 the wide ones, 128x64x64 the
# narrow ones. Each is a Triton compile per distinct epilogue at build time, so the list is kept short
# (resnet50's build-time target is 60 s with calibration).
TILE_CONFIGS = [(128, 128, 128, 8, 3), (128, 64, 64, 4, 4), (64, 64, 64, 4, 3), (128, 128, 64, 4, 4), (256, 128, 128, 8, 3)]
FP8_MIN_CAPABILITY = (8, 9)

# Shared by every 8-bit template: `acc` (int32 or FP32), `rm`, `rn`, `mask`, `offsets` are defined before it.
EPILOGUE_TAIL = """
    if HAS_ZP:
        acc -= x_zp * colsum[None, :]
    y = acc.to(tl.float32)
    if PER_CHANNEL:
        w_scale = tl.load(scale_ptr + rn, mask=rn < N, other=0.0)
    else:
        w_scale = tl.load(scale_ptr + rn * 0)
    acc = y * (w_scale * x_scale)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    {epilogue}
    if OUT_MODE == 1:
        tl.store(c_ptr + offsets, INT8_VALUE, mask=mask)
    elif OUT_MODE == 2:
        tl.store(c_ptr + offsets, FP8_VALUE, mask=mask)
    else:
        tl.store(c_ptr + offsets, acc.to(c_ptr.dtype.element_ty), mask=mask)
""".replace("INT8_VALUE", quantize_text("acc", "out_inv_scale", "OUT_ZP", "out_qmin", "out_qmax", fp8=False))
EPILOGUE_TAIL = EPILOGUE_TAIL.replace("FP8_VALUE", quantize_text("acc", "out_inv_scale", "OUT_ZP", "out_qmin", "out_qmax", fp8=True))


def residual_load(attrs: dict) -> str:
    """The residual tile in FP32. A float residual is loaded as it is; an 8-bit one (a block's requantized output,
    placement._requantize_outputs) is dequantized as the reference does, (q - zero point) * scale, the subtraction
    written only for a nonzero zero point (q - 0 is q): per element, no op the arithmetic does not need."""
    load = "tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)"
    if "res_scale" not in attrs:
        return load
    if attrs.get("res_zero_point", 0) != 0:
        load = f"({load} - res_zp)"
    return f"({load} * res_scale)"


def output_mode(attrs: dict) -> int:
    return {"int8": 1, "float8_e4m3fn": 2}.get(attrs["out_dtype"], 0)


def epilogue_args(layer, w_scale: torch.Tensor, bias, residual) -> dict:
    """The runtime scalars and flags of the tail, from the layer's attrs."""
    a = layer.attrs
    return dict(
        x_scale=float(a["x_scale"]),
        x_zp=int(a.get("x_zero_point", 0)),
        out_inv_scale=reciprocal(a.get("out_scale", 1.0)),
        out_qmin=float(a.get("out_qmin", -128)),
        out_qmax=float(a.get("out_qmax", 127)),
        res_scale=float(a.get("res_scale", 1.0)),
        res_zp=float(a.get("res_zero_point", 0)),
        HAS_ZP=int(a.get("x_zero_point", 0)) != 0,
        PER_CHANNEL=w_scale.numel() > 1,
        HAS_BIAS=bias is not None,
        OUT_MODE=output_mode(a),
        OUT_ZP=int(a.get("out_zero_point", 0)),
    )


def output_dtype(layer) -> torch.dtype:
    return dtype_from_name(layer.attrs["out_dtype"])


def applies(layer, target, qdtype: str) -> bool:
    """An 8-bit Triton template can take this layer on this target (FP8 needs compute capability 8.9+)."""
    if triton is None or not target.is_cuda or layer.attrs.get("qdtype") != qdtype:
        return False
    if layer.attrs.get("w_zero_point", 0) != 0 or not fusable_activation(layer.attrs.get("activation")):
        return False
    if qdtype == "fp8" and torch.cuda.get_device_capability(target.device) < FP8_MIN_CAPABILITY:
        return False
    return True


def accumulator_type(qdtype: str) -> str:
    return "tl.int32" if qdtype == "int8" else "tl.float32"
