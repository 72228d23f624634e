"""The `quantize` layer in one Triton kernel: FP16/FP32 → int8 or e4m3, in the input's own memory order.

The reference is five element-wise PyTorch kernels (multiply, round, add, clamp, cast), each a
trip through memory; here one read and one 1-byte write. The output keeps the input's strides
(NHWC stays NHWC for the next implicit-GEMM conv). Rounding as the reference: a multiply by the FP32
reciprocal of the scale (computed once here, on the host), then rint (half to even): the text of
kernels/quantized.quantize_text, which every kernel writing 8 bits shares.

A second tactic runs the quantize as a one-op program of the generated pointwise kernel
(kernels/fused_pointwise.py), which reads its input through its strides: the attention output
behind a permute (an INT8 BERT layer's O-projection input) is quantized where it lies, where the
kernel above first copies a strided input dense. The builder times both.
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.program import Program
from kiln.engine.kernels.codegen.triton_source import load_kernel
from kiln.engine.kernels.fused_pointwise import run_generated
from kiln.engine.kernels.quantized import quantize_text
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import MODULE_HEADER, triton
from kiln.engine.runtime.executor import arena_output
from kiln.quantize.numerics import STORAGE, reciprocal

SOURCE = (
    MODULE_HEADER
    + """
@triton.jit(do_not_specialize=["numel"])
def quantize_kernel(x_ptr, q_ptr, numel, inv_scale, zp, qmin, qmax, FP8: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if FP8:
        tl.store(q_ptr + offsets, FP8_VALUE, mask=mask)
    else:
        tl.store(q_ptr + offsets, INT8_VALUE, mask=mask)
"""
).replace("FP8_VALUE", quantize_text("x", "inv_scale", "zp", "qmin", "qmax", fp8=True))
SOURCE = SOURCE.replace("INT8_VALUE", quantize_text("x", "inv_scale", "zp", "qmin", "qmax", fp8=False))
BLOCK = 1024


def is_dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def quantize_triton(layer, inputs, run):
    x = inputs[0]
    if not is_dense(x):
        x = x.contiguous()
    a = layer.attrs
    fp8 = a["qdtype"] == "fp8"
    out = torch.empty_like(x, dtype=torch.float8_e4m3fn if fp8 else torch.int8)
    numel = x.numel()
    kernel = load_kernel(SOURCE, "quantize_kernel")
    kernel[(triton.cdiv(numel, BLOCK),)](
        x, out, numel, reciprocal(a["scale"]), int(a.get("zero_point", 0)), float(a.get("qmin", -128)), float(a.get("qmax", 127)),
        FP8=fp8, BLOCK=BLOCK,
    )  # fmt: skip
    return out


def _applies(layer, target) -> bool:
    if triton is None or not target.is_cuda:
        return False
    return layer.attrs["qdtype"] == "int8" or torch.cuda.get_device_capability(target.device) >= (8, 9)


tactic("quantize", "triton_quantize", when=_applies)(quantize_triton)


def quantize_generated(layer, inputs, run):
    op = {"kind": "quantize", "op": "quantize", "args": [0], "attrs": dict(layer.attrs)}
    (out,) = run_generated(Program(1, (op,), (1,)), [inputs[0]], [STORAGE[layer.attrs["qdtype"]]], [arena_output(run, 0)])
    return out


tactic("quantize", "triton_generated", when=_applies)(quantize_generated)
