"""The aggregator interface: decoded client updates in, one update out (rank 0).

``aggregate(updates, num_samples)`` gets the round's participating updates in client-id
order (each a list of float32 tensors, decoded when read: iterate once to stream) and the
training-set size of each; it returns float32 tensors of the same shapes. The codec re-encodes
the result. Order-independent results and float64 accumulation keep the run deterministic.

Two kinds, declared, never guessed:

* a plain weighted mean answers ``weights(num_samples)`` (the mean is sum w_i u_i / sum w_i)
  and does not override ``aggregate``: :meth:`Aggregator.foldable_weights` then returns the
  weights, and a codec may average in its own domain (SVD factors) instead of calling
  ``aggregate``;
* everything else (a subclass of a mean that overrides ``aggregate``, e.g. server momentum,
  or a robust rule) is always called.

An aggregator with memory across rounds keeps it in tensors returned by ``state_dict()`` and
restored by ``load_state_dict()``: rank 0 checkpoints it with the server, so a resumed run
continues it bit for bit.
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

    def foldable_weights(self, num_samples: np.ndarray) -> np.ndarray | None:
        """The weights, when the aggregate is exactly their weighted mean (``weights`` given
        and ``aggregate`` not overridden below the mean's own), so that a codec may fold the
        mean into its factored path; None: the codec must call :meth:`aggregate`."""
        impl = type(self).aggregate
        if impl is not getattr(type(self), "_mean_aggregate", None):
            return None
        return self.weights(num_samples)

    def state_dict(self) -> dict[str, Any]:
        """State carried from round to round (tensors, numbers, lists; checkpointed)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (resume)."""

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
