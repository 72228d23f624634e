"""The arithmetic of Kiln's quantized layers, in plain PyTorch: the oracle every kernel must match.

INT8: symmetric per-output-channel weights (zero point 0), per-tensor activations with an
optional zero point (QAT/PT2E graphs may carry one; Kiln's own calibration uses 0). Products of
int8 values are exact in float64 and so are their sums for any K below 2^37, so a float64
convolution/GEMM of the integer values gives exactly the INT32 accumulator an int8 tensor-core
kernel computes. FP8 (e4m3): per-channel/per-tensor scales to the e4m3 range, values rounded by
torch's float8_e4m3fn cast, products summed in float64 (the GPU accumulates in FP32, close to it).

The epilogue runs in FP32 in one order every kernel follows:
acc * (w_scale[c] * x_scale) + bias + residual → activation → cast, or requantize to 8 bits
(y * reciprocal(out_scale), rounded half to even, + zero point, clamped: `quantize` below).
"""

from __future__ import annotations

import torch

from kiln.engine.ir.dtypes import dtype_from_name

INT8_MIN, INT8_MAX = -128, 127
FP8_MAX = 448.0
QMAX = {"int8": float(INT8_MAX), "fp8": FP8_MAX}
STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def scale_from_amax(amax: float, qdtype: str) -> float:
    """The symmetric scale that maps [-amax, amax] onto the 8-bit range (1.0 for an all-zero tensor)."""
    return float(amax) / QMAX[qdtype] if amax > 0 else 1.0


def reciprocal(scale):
    """1 / scale in FP32, rounded once, as PyTorch's quantize ops compute it (`1.0f / scale` in ATen's fake-quantize
    and quantize_per_tensor kernels; quantized_decomposed's `input * (1.0 / scale)` rounds its float64 quotient to the
    FP32 tensor's dtype, the same number for an FP32 scale since 53 >= 2 * 24 + 2 makes the double rounding
    innocuous). A float gives a float, FP32-exact (a kernel argument or literal carries it unchanged); a tensor gives
    an FP32 tensor."""
    if isinstance(scale, torch.Tensor):
        return 1.0 / scale.float()
    return as_fp32(1.0 / as_fp32(scale))


def quantize(x: torch.Tensor, scale, zero_point: int, qdtype: str, qmin: int = INT8_MIN, qmax: int = INT8_MAX) -> torch.Tensor:
    """x (any float dtype) → 8-bit storage; `scale` a float or a tensor broadcastable to x. Rounds half to even.

    x is multiplied by the FP32 reciprocal of the scale, never divided by it: PyTorch's fake-quantize and
    quantize ops do so (a QAT or PT2E graph's own numbers are these), and a kernel's epilogue pays one FP32
    multiply per element where an IEEE division costs about ten instructions."""
    scaled = x.float() * reciprocal(scale)
    if qdtype == "fp8":
        return scaled.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (torch.round(scaled) + zero_point).clamp(qmin, qmax).to(torch.int8)


def dequantize(q: torch.Tensor, scale, zero_point: int = 0) -> torch.Tensor:
    return (q.float() - zero_point) * scale


# Every partial sum of K products of |a| <= 255 and |b| <= 128 is an integer below 2^24, exact in FP32, when K <= 513.
FP32_EXACT_K = (1 << 24) // (255 * 128)


def accumulation_dtype(q: torch.Tensor, k: int) -> torch.dtype:
    """FP32 where it is provably exact (much faster on a CPU), else float64 (exact for any K below 2^37)."""
    return torch.float32 if q.dtype == torch.int8 and k <= FP32_EXACT_K else torch.float64


def integer_values(q: torch.Tensor, zero_point: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 8-bit values (minus the zero point) as floats that the accumulation computes on exactly."""
    return q.to(dtype) - zero_point


def per_channel_weight(w: torch.Tensor, axis: int, qdtype: str) -> tuple[torch.Tensor, list[float]]:
    """Quantize a float weight symmetrically per slice along `axis` (the output channels)."""
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.detach().float().abs().amax(dim=dims) if dims else w.detach().float().abs()
    scales = [scale_from_amax(a, qdtype) for a in amax.tolist()]
    shape = [1] * w.dim()
    shape[axis] = -1
    scale_t = torch.tensor(scales, dtype=torch.float32, device=w.device).view(shape)
    return quantize(w, scale_t, 0, qdtype, -INT8_MAX, INT8_MAX), scales


def channel_scale(w_scale: torch.Tensor, x_scale: float) -> torch.Tensor:
    """w_scale[c] * x_scale in FP32, the per-output-channel factor of the epilogue (kernels compute it the same way)."""
    # x_scale rounded to FP32 first: the product is then one FP32 rounding, as in the kernels.
    return w_scale.float() * as_fp32(x_scale)


def as_fp32(value: float) -> float:
    """`value` rounded to FP32, as a kernel's float argument is. A Python scalar (not a new device tensor) keeps
    the references free of host-to-device copies inside CUDA-graph capture."""
    return float(torch.tensor(value, dtype=torch.float32))


def finish(acc: torch.Tensor, attrs: dict, channel_dim: int, bias, residual, w_scale: torch.Tensor, activation_fn) -> torch.Tensor:
    """The epilogue on an exact accumulator: dequantize, bias, residual, activation, then cast or requantize."""
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    y = acc.float() * channel_scale(w_scale, attrs["x_scale"]).view(shape)
    if bias is not None:
        y = y + bias.float().view(shape)
    if residual is not None:
        if "res_scale" in attrs:  # an 8-bit residual (placement._requantize_outputs): dequantized in FP32, as the kernels do
            residual = (residual.float() - attrs.get("res_zero_point", 0)) * as_fp32(attrs["res_scale"])
        y = y + residual.float()
    if attrs.get("activation") is not None:
        y = activation_fn(attrs["activation"], y, attrs.get("activation_attrs", {}))
    out_dtype = attrs["out_dtype"]
    if out_dtype in ("int8", "float8_e4m3fn"):
        qdtype = "int8" if out_dtype == "int8" else "fp8"
        return quantize(
            y, attrs["out_scale"], attrs.get("out_zero_point", 0), qdtype, attrs.get("out_qmin", INT8_MIN), attrs.get("out_qmax", INT8_MAX)
        )
    return y.to(dtype_from_name(out_dtype))
