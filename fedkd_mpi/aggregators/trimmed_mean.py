"""Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the
``floor(train.trim_fraction * n)`` largest and smallest values, average the rest (unweighted).
"""

from __future__ import annotations

import math

import torch

from fedkd_mpi.aggregators.base import Aggregator, stacked


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (``train.trim_fraction`` at each end)."""

    name = "trimmed_mean"

    def aggregate(self, updates, num_samples):
        out = []
        for x in stacked(updates):
            n = x.shape[0]
            k = min(math.floor(self.cfg.train.trim_fraction * n), (n - 1) // 2)
            s = torch.sort(x, dim=0).values
            out.append(s[k : n - k].mean(dim=0).to(torch.float32))
        return out
