"""Reference tactics of the quantized layer kinds (made by optimize/quantize_placement.py).

- `quantize`:  [x] → 8-bit x (attrs scale, zero_point, qdtype, qmin, qmax).
- `qconv`:     [x_q, w_q, bias, residual, w_scale] → conv attrs + the quantization attrs below.
- `qlinear`:   [x_q, w_q (N x K), bias, residual, w_scale].
- `qmatmul`:   [a_q, b_q, bias, residual, w_scale]: b is an activation (one scale) or a weight
               (one scale per output column).
- `fake_quantize`: a QAT/PT2E fake-quantize op left as it is (float in, float out).

w_scale is an FP32 constant: one scale per output channel, or one value. Quantization attrs:
qdtype ("int8"/"fp8"), x_scale, x_zero_point, w_zero_point (qmatmul on two activations), activation and
activation_attrs (an absorbed unary op), residual (bool), out_dtype, and out_scale /
out_zero_point when the output is requantized to 8 bits for 8-bit readers.

These references compute the integer accumulation exactly (quantize/numerics.py), so on a CPU
they give what an INT8 tensor-core kernel gives; every fast tactic is tested against them.
"""

import torch

from kiln.engine.kernels.pointwise import UNARY_OPS
from kiln.engine.kernels.registry import reference
from kiln.quantize.numerics import FP32_EXACT_K, accumulation_dtype, finish, integer_values, quantize, reciprocal


def apply_activation(name: str, y: torch.Tensor, attrs: dict) -> torch.Tensor:
    return UNARY_OPS[name](y, attrs)


@reference("quantize")
def quantize_reference(layer, inputs, run):
    a = layer.attrs
    return quantize(inputs[0], a["scale"], a.get("zero_point", 0), a["qdtype"], a.get("qmin", -128), a.get("qmax", 127))


# 1.5 * 2^23. Added to an FP32 value of magnitude below 2^22, the sum lies where FP32's spacing is 1, so the addition
# rounds the value to an integer half to even (the constant is even: a tie goes to an even rint), and that integer
# is the sum's low mantissa bits. The constant's low byte is 0, so the int8 store's truncation of the sum's bits
# keeps rint(value) itself: one FP32 add where rint and a float-to-int conversion were (FRND and F2I on sm_90, both
# on the conversion pipe, 16 lanes per clock per SM against the FP32 pipe's 128; a saturating F2I.S8 from inline
# PTX was no fewer instructions either, its int16 results costing byte permutes: ptxas output, 2026-11-25).
ROUND_HALF_EVEN = 12582912.0


def quantize_text(x: str, inv_scale: str, zero_point: str, qmin: str, qmax: str, fp8: bool) -> str:
    """The quantize arithmetic as a Triton expression over the FP32 value `x`, giving the value to store (tl.int8 or
    tl.float8e4nv); the other arguments are expressions too (literals or a kernel's arguments), `inv_scale` the
    FP32 reciprocal of the scale that numerics.reciprocal computed once on the host. Exactly the reference's
    (numerics.quantize): x * inv_scale; for int8 rint (half to even), + zero point, the clamp; for e4m3 the ±448
    clamp, then the cast rounding to e4m3 as torch's .to(float8_e4m3fn) does.

    For e4m3 the clamp is the cast's own: Triton converts FP32 to e4m3 with cvt.rn.satfinite (sm_89+), which rounds
    to nearest even and takes anything past ±448 to ±448, what the reference's clamp then cast gives (a NaN stays
    NaN, as in the reference). Two FP32 ops per element saved; tests/quantize/test_triton_quantized_compile.py
    fails if a Triton release converts otherwise.

    For int8 the clamp comes first, to [qmin - zero point, qmax - zero point]: integer bounds, so clamping before
    rounding gives what rounding before clamping gives, and the clamped value is small enough for ROUND_HALF_EVEN.
    The zero point is added to the rounded integer's bits (an integer add; none for a literal "0"), after the
    rounding: added to the float before it, an odd zero point would move which way ties go.
    Every kernel that writes 8 bits takes its arithmetic from here."""
    scaled = f"({x} * {inv_scale})"
    if fp8:
        return f"{scaled}.to(tl.float8e4nv)"
    if zero_point == "0":
        low, high, shift = qmin, qmax, ""
    else:
        low, high, shift = f"({qmin} - {zero_point})", f"({qmax} - {zero_point})", f" + {zero_point}"
    clamped = f"tl.minimum(tl.maximum({scaled}, {low}), {high})"
    return f"(({clamped} + {ROUND_HALF_EVEN!r}).to(tl.int32, bitcast=True){shift}).to(tl.int8)"


def quantize_triton_op(x: str, attrs: dict) -> str:
    """A `quantize` layer as an op of generated kernels (codegen/program.py): its parameters become literals, the
    scale's FP32 reciprocal computed here, once, as the reference computes it."""
    a = attrs
    bounds = (float(a.get("qmin", -128)), float(a.get("qmax", 127)))
    return quantize_text(x, repr(reciprocal(a["scale"])), repr(int(a.get("zero_point", 0))), *map(repr, bounds), fp8=a["qdtype"] == "fp8")


def conv_accumulator(x: torch.Tensor, w: torch.Tensor, attrs: dict) -> torch.Tensor:
    """The exact accumulator. INT8 with a long reduction is split into input-channel chunks whose
    FP32 sums are exact, added in float64: float64 convolutions are slow (on GPUs above all)."""
    a = attrs
    conv = lambda xv, wv, groups: torch.ops.aten.convolution(xv, wv, None, a["stride"], a["padding"], a["dilation"], False, [0, 0], groups)
    taps = w[0, 0].numel()
    zero_point = a.get("x_zero_point", 0)
    if x.dtype != torch.int8 or accumulation_dtype(x, w[0].numel()) == torch.float32 or a["groups"] != 1 or taps > FP32_EXACT_K:
        dtype = accumulation_dtype(x, w[0].numel())
        return conv(integer_values(x, zero_point, dtype), integer_values(w, 0, dtype), a["groups"])
    step = FP32_EXACT_K // taps
    acc = None
    for c0 in range(0, x.shape[1], step):
        xv = integer_values(x[:, c0 : c0 + step], zero_point, torch.float32)
        part = conv(xv, integer_values(w[:, c0 : c0 + step], 0, torch.float32), 1)
        acc = part.double() if acc is None else acc + part.double()
    return acc


@reference("qconv")
def qconv_reference(layer, inputs, run):
    x, w, bias, residual, w_scale = inputs
    return finish(conv_accumulator(x, w, layer.attrs), layer.attrs, 1, bias, residual, w_scale, apply_activation)


@reference("qlinear")
def qlinear_reference(layer, inputs, run):
    x, w, bias, residual, w_scale = inputs
    dtype = accumulation_dtype(x, w.shape[1])
    acc = integer_values(x, layer.attrs.get("x_zero_point", 0), dtype) @ integer_values(w, 0, dtype).t()
    return finish(acc, layer.attrs, -1, bias, residual, w_scale, apply_activation)


@reference("qmatmul")
def qmatmul_reference(layer, inputs, run):
    a, b, bias, residual, w_scale = inputs
    attrs = layer.attrs
    dtype = accumulation_dtype(a, a.shape[-1])
    acc = integer_values(a, attrs.get("x_zero_point", 0), dtype) @ integer_values(b, attrs.get("w_zero_point", 0), dtype)
    return finish(acc, attrs, -1, bias, residual, w_scale, apply_activation)


@reference("fake_quantize")
def fake_quantize_reference(layer, inputs, run):
    a = layer.attrs
    x = inputs[0]
    if a["axis"] is None:
        out = torch.fake_quantize_per_tensor_affine(x.float(), a["scale"], a["zero_point"], a["qmin"], a["qmax"])
    else:
        scale, zero_point = inputs[1], inputs[2]
        out = torch.fake_quantize_per_channel_affine(x.float(), scale.float(), zero_point.int(), a["axis"], a["qmin"], a["qmax"])
    return out.to(x.dtype)
