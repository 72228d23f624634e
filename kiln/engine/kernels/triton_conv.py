"""FP16/BF16 convolutions (groups == 1, any kernel size, stride, padding, dilation) as one Triton
implicit GEMM over NHWC memory, with the epilogue fused: bias, residual add, any activation.

cuDNN's fused conv path takes only ReLU, so a 3x3 conv followed by a leaky_relu (CSPNet, DarkNet,
YOLO) or a SiLU ran as a cuDNN conv and then a separate epilogue pass that reads and writes the
whole output again (aten_conv.conv_epilogue_nhwc). Here the FP32 output tile is finished in
registers (bias, then the residual, then the activation: the order of the conv_epilogue reference,
generated from the op vocabulary by triton_epilogue.load_template) and written once, into the
arena's buffer when it is a dense NHWC tensor.

The main loop (output pixels as rows, filter taps with channels fastest as columns) is rendered from
codegen/implicit_gemm.py, the text the 8-bit template (triton_quantized_conv.py) renders from too.
The weight is prepared once at build time as [Cout, KH * KW * Cin] (shaped [Cout, KH, KW, Cin]). Tile configurations are separate
tactics of `conv` and `conv_epilogue`, so the builder times each against cuDNN per layer and keeps
the fastest. 1x1 stride-1 convs are left to triton_gemm_1x1 (a plain GEMM over NHWC rows).
"""

from __future__ import annotations

import torch

from kiln.engine.kernels.codegen.implicit_gemm import main_loop, output_size, pixel_rows, weight_n_by_taps
from kiln.engine.kernels.codegen.tiles import grouped_tile, index_range, tile_count, wide_index
from kiln.engine.kernels.registry import tactic
from kiln.engine.kernels.triton_epilogue import load_template, nhwc_output, nhwc_rows, require_low_precision, takes_2d_conv, triton
from kiln.engine.runtime.executor import arena_output

# Sizes that follow the input's shape are not specialised on: a ranged engine's new shape must launch
# the compiled kernel, not compile another. C, N and K are, so Triton sees when rows of channels are
# 16-element aligned and vectorises the loads. {epilogue} is filled per layer.
TEMPLATE = (
    """
@triton.jit(do_not_specialize=["M", "H", "W", "OH", "OW"])
def conv_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, c_ptr, M, N, K,
    H, W, C, OH, OW, SH, SW, PH, PW, DH, DW, KH, KW,
    HAS_BIAS: tl.constexpr, TAP_LOOP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    WIDE_INDEX: tl.constexpr,
):
    tile = tl.program_id(0)
GROUPED_TILE
ROW_RANGE
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
PIXEL_ROWS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
MAIN_LOOP
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    {epilogue}
    tl.store(c_ptr + offsets, acc.to(c_ptr.dtype.element_ty), mask=mask)
""".replace("GROUPED_TILE", grouped_tile("    "))
    .replace("ROW_RANGE", index_range("rm", "pid_m", "BLOCK_M", "    "))
    .replace("PIXEL_ROWS", pixel_rows("    "))
    .replace("MAIN_LOOP", main_loop("    ", "acc = tl.dot(a, b, acc)"))
)
RESIDUAL_LOAD = "tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)"

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), each a tactic the builder times per layer: a big tile
# for wide layers at large batch, narrower ones for 64-channel layers and for few output pixels (batch 1,
# late stages), and a short K step with more stages for narrow inputs. Each is a Triton compile per
# distinct epilogue at build time, so the list is kept short.
CONFIGS = {
    "triton_conv_128x128": (128, 128, 64, 8, 3),
    "triton_conv_128x64": (128, 64, 64, 4, 4),
    "triton_conv_64x64": (64, 64, 64, 4, 3),
    "triton_conv_64x128": (64, 128, 32, 4, 4),
}


def k_step(channels: int, k: int, block_k: int) -> tuple[int, bool]:
    """(BLOCK_K, TAP_LOOP) for this input: the config's K step cut to what the channels need (at least 16, what
    tl.dot takes); inputs narrower than half of that (a 3-channel stem) take the flat K loop, its step cut to K."""
    narrow = min(block_k, max(16, triton.next_power_of_2(channels)))
    if channels >= narrow // 2:
        return narrow, True
    return min(block_k, max(16, triton.next_power_of_2(k))), False


def conv_nhwc(x: torch.Tensor, w_taps: torch.Tensor, bias, residual, attrs: dict, config: tuple, out: torch.Tensor | None = None):
    """act(conv2d(x) + bias + residual) for x [N, C, H, W] (channels-last memory preferred) and the prepared
    w_taps [Cout, KH, KW, C]; returns a channels-last [N, Cout, OH, OW] tensor (`out` when it is one)."""
    n, c, h, w = x.shape
    if w_taps.dim() != 4 or w_taps.shape[3] != c or not w_taps.is_contiguous():
        raise ValueError("triton_conv runs only with the [Cout, KH, KW, Cin] weight its prepare made")
    cout, kh, kw = w_taps.shape[:3]
    (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
    oh, ow = output_size(h, ph, dh, kh, sh), output_size(w, pw, dw, kw, sw)
    k = kh * kw * c
    x = x.contiguous(memory_format=torch.channels_last)
    out = nhwc_output(out, (n, cout, oh, ow), x)
    res = nhwc_rows(residual) if residual is not None else None
    m = n * oh * ow
    block_m, block_n, block_k, warps, stages = config
    block_k, tap_loop = k_step(c, k, block_k)
    kernel = load_template(TEMPLATE, "conv_kernel", attrs, RESIDUAL_LOAD if res is not None else None)
    kernel[(tile_count(m, cout, block_m, block_n),)](
        x, w_taps, bias if bias is not None else w_taps, res if res is not None else out, out, m, cout, k,
        h, w, c, oh, ow, sh, sw, ph, pw, dh, dw, kh, kw,
        HAS_BIAS=bias is not None, TAP_LOOP=tap_loop, WIDE_INDEX=wide_index(x.numel(), out.numel(), w_taps.numel()),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def _applies(layer, target) -> bool:
    return takes_2d_conv(layer, target) and layer.attrs["groups"] == 1


def weight_taps(layer, weights: dict) -> dict:
    """The implicit GEMM's B, [Cout, KH * KW * Cin] K-major (codegen/implicit_gemm.weight_n_by_taps), kept as the
    same bytes shaped [Cout, KH, KW, Cin]: a conv layer's attrs do not carry its kernel size, the weight does.

    A 1x1 stride-1 conv is declined (ValueError, which the builder takes as "not this layer"): it is a
    plain GEMM over NHWC rows, which triton_gemm_1x1 runs without the tap arithmetic."""
    w = weights.get(layer.inputs[1])
    if w is not None and w.dim() == 4 and tuple(w.shape[2:]) == (1, 1) and is_pointwise_conv_attrs(layer.attrs):
        raise ValueError("triton_conv leaves 1x1 stride-1 convs to triton_gemm_1x1")
    ((name, taps),) = weight_n_by_taps(layer, weights).items()
    return {name: taps.view(w.shape[0], w.shape[2], w.shape[3], w.shape[1])}


def is_pointwise_conv_attrs(a: dict) -> bool:
    return not a["transposed"] and a["groups"] == 1 and list(a["stride"]) == [1, 1] and list(a["padding"]) == [0, 0]


def _register(kind: str, name: str, config: tuple) -> None:
    def conv_triton(layer, inputs, run):
        """A `conv` ([x, w, b]) or a `conv_epilogue` ([x, w, b, residual] and an activation)."""
        x, w_taps, b, *residual = inputs
        require_low_precision(x, name)
        return conv_nhwc(x, w_taps, b, residual[0] if residual else None, layer.attrs, config, arena_output(run, 0))

    tactic(kind, name, when=_applies, prepare=weight_taps)(conv_triton)


for _kind in ("conv", "conv_epilogue"):
    for _name, _config in CONFIGS.items():
        _register(_kind, _name, _config)
