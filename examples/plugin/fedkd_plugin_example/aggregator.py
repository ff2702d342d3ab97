"""The ``clipped_mean`` aggregator: every update's global L2 norm (over all its tensors) is
clipped to ``plugins.clipped_mean.max_norm``, then the clipped updates are averaged uniformly
(float64 accumulation, float32 result), as in differentially private FedAvg (McMahan et al.
2018) without the noise. A client's update of norm ``n`` is scaled by ``min(1, max_norm / n)``,
so a single huge update cannot drag the average further than ``max_norm / num_clients``."""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedkd_mpi.aggregators import Aggregator


def clip_factor(update: list[torch.Tensor], max_norm: float) -> float:
    """``min(1, max_norm / ||update||)`` with the norm over all tensors (float64)."""
    norm = math.sqrt(sum(float(t.to(torch.float64).pow(2).sum()) for t in update))
    return 1.0 if norm <= max_norm else max_norm / norm


class ClippedMean(Aggregator):
    """``train.aggregation: clipped_mean`` (``plugins.clipped_mean.max_norm``)."""

    name = "clipped_mean"

    class Settings(BaseModel):
        """``plugins.clipped_mean``."""

        model_config = ConfigDict(extra="forbid")
        max_norm: float = Field(1.0, gt=0.0, description="L2 bound of each client's update")

    def aggregate(self, updates, num_samples) -> list[torch.Tensor]:
        max_norm = self.settings.max_norm
        acc: list[torch.Tensor] | None = None
        count = 0
        for update in updates:  # streams: each update is decoded once
            c = clip_factor(update, max_norm)
            if acc is None:
                acc = [c * t.to(torch.float64) for t in update]
            else:
                for a, t in zip(acc, update, strict=True):
                    a.add_(t.to(torch.float64), alpha=c)
            count += 1
        if acc is None:
            raise ValueError("no update to aggregate")
        return [(a / count).to(torch.float32) for a in acc]

    def weights(self, num_samples: np.ndarray) -> None:
        return None  # not a weighted mean of the raw updates: codecs must not average factors
