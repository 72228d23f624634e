"""The implicit-GEMM convolution loop over NHWC memory, shared by the FP16/BF16 template
(kernels/triton_conv.py) and the 8-bit one (kernels/triton_quantized_conv.py).

Row m of the implicit A matrix is one output pixel (n, oh, ow), column k one filter tap
(r, s, c) with c fastest, so each load reads channels that lie together in NHWC memory. B is the
weight stored [Cout, KH * KW * Cin] (K fastest, tap-major). Wide inputs take one flat loop over
(tap, channel block) steps: index arithmetic per step, not per element, and one loop for Triton to
software-pipeline (nested tap / channel loops left a 64-channel layer one inner step, never
pipelined: 2x slower). Narrow inputs (a 3-channel stem) take one flat K = KH * KW * C, each column
decoded to its tap, so a tile is not mostly padding.

The rendered text expects, in the kernel: x_ptr, w_ptr, M, N, K, H, W, C, OH, OW, SH, SW, PH, PW,
DH, DW, KH, KW, TAP_LOOP, BLOCK_K, `rm` and `rn` (the tile's rows and columns) and `acc`. A template
adds its own statements through two hooks: after each A load (given the expression of the mask of
taps inside the image, e.g. the 8-bit template replaces padding with the activation zero point) and
after each product (the 8-bit template's zero-point column sums).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def pixel_rows(indent: str) -> str:
    """n_idx, oh, ow of each row `rm` (an output pixel), and `rk`, the tile's K offsets."""
    lines = ["rk = tl.arange(0, BLOCK_K)", "n_idx = rm // (OH * OW)", "pix = rm % (OH * OW)", "oh = pix // OW", "ow = pix % OW"]
    return "\n".join(indent + line for line in lines)


def main_loop(indent: str, dot: str, after_a: Callable[[str], Sequence[str]] = lambda inside: (), after_dot: Sequence[str] = ()) -> str:
    """Both K loops under `if TAP_LOOP:` / `else:`; `dot` accumulates a [BLOCK_M, BLOCK_K] @ b [BLOCK_K, BLOCK_N] into acc."""
    tap_loop = [
        "# Wide inputs: one flat loop over (tap, channel block) steps, so Triton software-pipelines it",
        "# (nested tap / channel loops left a 64-channel layer one inner step, never pipelined: 2x slower).",
        "CB = tl.cdiv(C, BLOCK_K)",
        "for step in range(0, KH * KW * CB):",
        "    tap = step // CB",
        "    c0 = (step % CB) * BLOCK_K",
        "    r = tap // KW",
        "    s = tap % KW",
        "    ih = oh * SH - PH + r * DH",
        "    iw = ow * SW - PW + s * DW",
        "    pix_ok = (rm < M) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)",
        "    x_row = ((n_idx * H + ih) * W + iw) * C",
        "    cc = c0 + rk",
        "    a = tl.load(x_ptr + x_row[:, None] + cc[None, :], mask=pix_ok[:, None] & (cc[None, :] < C), other=0.0)",
        *("    " + line for line in after_a("pix_ok[:, None]")),
        "    w_cols = tap * C + cc",
        "    b = tl.load(w_ptr + rn[None, :] * K + w_cols[:, None], mask=(cc[:, None] < C) & (rn[None, :] < N), other=0.0)",
        f"    {dot}",
        *("    " + line for line in after_dot),
    ]
    flat_loop = [
        "# Narrow inputs (a 3-channel stem): one flat K = KH * KW * C, each column decoded to its tap.",
        "for k0 in range(0, K, BLOCK_K):",
        "    kk = k0 + rk",
        "    c = kk % C",
        "    tap = kk // C",
        "    r = tap // KW",
        "    s = tap % KW",
        "    ih = oh[:, None] * SH - PH + r[None, :] * DH",
        "    iw = ow[:, None] * SW - PW + s[None, :] * DW",
        "    inside = (rm[:, None] < M) & (kk[None, :] < K) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)",
        "    a_offsets = ((n_idx[:, None] * H + ih) * W + iw) * C + c[None, :]",
        "    a = tl.load(x_ptr + a_offsets, mask=inside, other=0.0)",
        *("    " + line for line in after_a("inside")),
        "    b = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)",
        f"    {dot}",
        *("    " + line for line in after_dot),
    ]
    lines = ["if TAP_LOOP:", *("    " + line for line in tap_loop), "else:", *("    " + line for line in flat_loop)]
    return "\n".join(indent + line for line in lines)


def weight_n_by_taps(layer, weights: dict) -> dict:
    """[Cout, Cin, KH, KW] → [Cout, KH * KW * Cin]: the implicit GEMM's B stored K-major (channels fastest within a
    tap), the layout tensor-core MMAs take without a transpose (8-bit ones need it: triton_quantized_gemm.weight_n_by_k)."""
    name = layer.inputs[1]
    w = weights.get(name)
    if w is None or w.dim() != 4:
        raise ValueError(f"an implicit-GEMM conv needs its [Cout, Cin, KH, KW] weight {name!r} known at build time")
    return {name: w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()}


def output_size(size: int, pad: int, dilation: int, kernel: int, stride: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
