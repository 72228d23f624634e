"""Activation ranges from a histogram of |x|: one registered function per calibration algorithm.

Each returns the amax (clipping threshold) the scale is computed from. The search grids assume
the 127 positive levels of INT8; FP8 layers use the same threshold with the e4m3 range.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kiln.errors import KilnError
from kiln.quantize.observers import TensorHistogram

QUANT_LEVELS = 128  # levels of one sign of int8, TensorRT's num_quantized_bins

RangeFn = Callable[[TensorHistogram, dict], float]
ALGORITHMS: dict[str, RangeFn] = {}


def range_algorithm(name: str):
    def register(fn: RangeFn) -> RangeFn:
        ALGORITHMS[name] = fn
        return fn

    return register


def activation_amax(algorithm: str, histogram: TensorHistogram, options: dict) -> float:
    try:
        fn = ALGORITHMS[algorithm]
    except KeyError:
        raise KilnError(f"unknown calibration algorithm {algorithm!r}; choose one of {sorted(ALGORITHMS)}.") from None
    if histogram.counts is None or histogram.amax == 0:
        return histogram.amax
    return min(float(fn(histogram, options)), histogram.amax)


@range_algorithm("minmax")
def minmax(histogram: TensorHistogram, options: dict) -> float:
    return histogram.amax


@range_algorithm("percentile")
def percentile(histogram: TensorHistogram, options: dict) -> float:
    counts, width = histogram.rebinned(len(histogram.counts))
    cdf = np.cumsum(counts)
    target = cdf[-1] * options.get("percentile", 99.99) / 100.0
    index = int(np.searchsorted(cdf, target))
    return (index + 1) * width


@range_algorithm("entropy")
def entropy(histogram: TensorHistogram, options: dict) -> float:
    """TensorRT's entropy calibration 2: the threshold whose 128-level quantization of the clipped
    distribution has the smallest KL divergence from it (outliers folded into the last bin)."""
    counts, width = histogram.rebinned()
    hist = np.asarray(counts, dtype=np.float64)
    nbins = len(hist)
    if nbins <= QUANT_LEVELS:
        return histogram.amax
    # Coarse to fine: every 16th threshold, then each one around the best (TensorRT tries each one).
    best_kl, best_i = np.inf, nbins
    coarse = list(range(QUANT_LEVELS, nbins + 1, 16))
    for i in coarse:
        kl = _kl_at(hist, i)
        if kl < best_kl:
            best_kl, best_i = kl, i
    for i in range(max(QUANT_LEVELS, best_i - 15), min(nbins, best_i + 15) + 1):
        kl = _kl_at(hist, i)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * width


def _kl_at(hist: np.ndarray, i: int) -> float:
    """KL divergence between the histogram clipped at bin i and its 128-level quantization."""
    p = hist[:i].copy()
    p[i - 1] += hist[i:].sum()
    nonzero = p > 0
    # Merge the i bins into 128 levels, then spread each level's mass evenly over its non-empty bins.
    edges = np.linspace(0, i, QUANT_LEVELS + 1).astype(np.int64)
    q = np.zeros(i)
    level_mass = np.add.reduceat(hist[:i], edges[:-1])
    level_nonzero = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
    level_of_bin = np.repeat(np.arange(QUANT_LEVELS), np.diff(edges))
    spread = np.divide(level_mass, level_nonzero, out=np.zeros(QUANT_LEVELS), where=level_nonzero > 0)
    q[nonzero] = spread[level_of_bin][nonzero]
    return _kl(p, q)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    total = q.sum()
    if total == 0:
        return np.inf
    q = q / total
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


@range_algorithm("mse")
def mse(histogram: TensorHistogram, options: dict) -> float:
    """The threshold that minimises the expected squared error (rounding inside, clipping outside) over the histogram."""
    counts, width = histogram.rebinned()
    hist = np.asarray(counts, dtype=np.float64)
    centers = (np.arange(len(hist)) + 0.5) * width
    candidates = np.linspace(histogram.amax * 0.05, histogram.amax, 200)
    scales = candidates / 127.0
    levels = np.clip(np.round(centers[None, :] / scales[:, None]), 0, 127)
    err = ((centers[None, :] - levels * scales[:, None]) ** 2 * hist[None, :]).sum(axis=1)
    return float(candidates[int(np.argmin(err))])
