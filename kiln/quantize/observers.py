"""Per-tensor histograms of |x| over the calibration batches, kept on the tensor's device.

The bin width is fixed by the first batch (its amax over BINS bins); a later batch with a larger
amax adds bins of the same width, and past MAX_BINS neighbouring bins merge (the width doubles),
so one pass over the data suffices and the counts stay exact sums of whole bins.
"""

from __future__ import annotations

import math

import torch

BINS = 2048
MAX_BINS = 8 * BINS


class TensorHistogram:
    def __init__(self):
        self.counts: torch.Tensor | None = None
        self.width = 0.0
        self.amax = 0.0

    def update(self, x: torch.Tensor) -> None:
        values = x.detach().float().abs().flatten()
        if values.numel() == 0:
            return
        amax = values.max().item()
        if not math.isfinite(amax):
            values = values[torch.isfinite(values)]
            amax = values.max().item() if values.numel() else 0.0
        self.amax = max(self.amax, amax)
        if self.counts is None:
            self.width = amax / BINS if amax > 0 else 1e-8
            self.counts = torch.zeros(BINS, dtype=torch.float64, device=values.device)
        needed = math.ceil(amax / self.width) if amax > 0 else 1
        if needed > self.counts.numel():
            self._grow(needed)
        nbins = self.counts.numel()
        hist = torch.histc(values, bins=nbins, min=0.0, max=self.width * nbins)
        self.counts += hist.to(torch.float64)

    def _grow(self, needed: int) -> None:
        counts = self.counts
        while needed > MAX_BINS:
            if counts.numel() % 2:
                counts = torch.cat([counts, counts.new_zeros(1)])
            counts = counts.view(-1, 2).sum(1)
            self.width *= 2
            needed = math.ceil(needed / 2)
        self.counts = torch.cat([counts, counts.new_zeros(max(needed - counts.numel(), 0))])

    def rebinned(self, bins: int = BINS) -> tuple[list[float], float]:
        """The counts merged to at most `bins` bins (as a CPU list) and the bin width."""
        counts, width = self.counts.cpu(), self.width
        factor = math.ceil(counts.numel() / bins)
        if factor > 1:
            pad = (-counts.numel()) % factor
            counts = torch.cat([counts, counts.new_zeros(pad)]).view(-1, factor).sum(1)
            width *= factor
        return counts.tolist(), width
