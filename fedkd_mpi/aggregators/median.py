"""Coordinate-wise median (Yin et al. 2018): robust to a minority of arbitrary updates.

Per coordinate, the middle value of the participants' updates (the mean of the two middle
ones for an even count); client sizes are ignored.
"""

from __future__ import annotations

import torch

from fedkd_mpi.aggregators.base import Aggregator, stacked


class Median(Aggregator):
    """Coordinate-wise median."""

    name = "median"

    def aggregate(self, updates, num_samples):
        out = []
        for x in stacked(updates):
            s = torch.sort(x, dim=0).values
            n = s.shape[0]
            out.append(((s[(n - 1) // 2] + s[n // 2]) / 2).to(torch.float32))
        return out
