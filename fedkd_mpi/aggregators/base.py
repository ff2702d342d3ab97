"""The aggregator interface: decoded client updates in, one update out (rank 0).

``aggregate(updates, num_samples)`` gets the round's participating updates in client-id
order (each a list of float32 tensors, decoded when read: iterate once to stream) and the
training-set size of each; it returns float32 tensors of the same shapes. The codec re-encodes
the result. A linear aggregator also answers ``weights(num_samples)`` (the mean is
sum w_i u_i / sum w_i), which lets a codec average in its own domain (SVD factors) instead.
Order-independent results and float64 accumulation keep the run deterministic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedkd_mpi.registry import Registered, Registry, plugin_settings

if TYPE_CHECKING:
    from fedkd_mpi.config import Config


class Aggregator(Registered, ABC):
    """Base of every aggregator; subclasses set ``name`` to register."""

    registry = Registry("aggregators", "fedkd_mpi.aggregators")

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.settings: Any = plugin_settings(type(self), cfg)

    def weights(self, num_samples: np.ndarray) -> np.ndarray | None:
        """Client weights when the aggregate is their weighted mean; None otherwise."""
        return None

    @abstractmethod
    def aggregate(self, updates: Sequence[list[torch.Tensor]],
                  num_samples: np.ndarray) -> list[torch.Tensor]:
        """One float32 update from the participants' decoded updates."""


def weighted_mean(updates: Iterable[list[torch.Tensor]], weights: np.ndarray) -> list[torch.Tensor]:
    """sum w_i u_i / sum w_i in float64, in the given order (streams); float32 result."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    acc: list[torch.Tensor] | None = None
    for wi, ts in zip(w.tolist(), updates, strict=True):
        if acc is None:
            acc = [wi * t.to(torch.float64) for t in ts]
        else:
            for a, t in zip(acc, ts, strict=True):
                a.add_(t.to(torch.float64), alpha=wi)
    if acc is None:
        raise ValueError("no update to aggregate")
    return [a.to(torch.float32) for a in acc]


def stacked(updates: Sequence[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per tensor, the participants' values stacked on a new first axis, float64."""
    decoded = list(updates)
    return [torch.stack([u[j].to(torch.float64) for u in decoded])
            for j in range(len(decoded[0]))]


def aggregator_of(cfg: Config) -> Aggregator:
    """The aggregator named by ``train.aggregation``."""
    cls = Aggregator.registry.get(cfg.train.aggregation, "train.aggregation", Aggregator)
    return cls(cfg)
