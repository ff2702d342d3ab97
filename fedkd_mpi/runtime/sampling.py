"""Client sampling per round: a deterministic function of (seed, round), the same on every rank.

``train.sample_count`` (if set) or ``round(train.sample_fraction * num_clients)`` clients (at
least one) take part in a round, drawn without replacement from ``rng(seed, "sampling", rnd)``.
Nothing here depends on the rank or on the number of ranks.
"""

from __future__ import annotations

import numpy as np

from fedkd_mpi.config import TrainConfig
from fedkd_mpi.seeding import rng


def num_sampled(num_clients: int, fraction: float = 1.0, count: int | None = None) -> int:
    """How many clients take part in each round."""
    if count is not None:
        return min(int(count), num_clients)
    return min(num_clients, max(1, round(fraction * num_clients)))


def participants(num_clients: int, rnd: int, seed: int, fraction: float = 1.0,
                 count: int | None = None) -> np.ndarray:
    """bool[num_clients]: which clients train and upload in round ``rnd`` (0-based)."""
    m = num_sampled(num_clients, fraction, count)
    mask = np.zeros(num_clients, dtype=bool)
    if m >= num_clients:
        mask[:] = True
    else:
        mask[rng(seed, "sampling", rnd).choice(num_clients, m, replace=False)] = True
    return mask


def round_participants(cfg: TrainConfig, num_clients: int, seed: int, rnd: int) -> np.ndarray:
    """:func:`participants` from the ``train`` section."""
    return participants(num_clients, rnd, seed, cfg.sample_fraction, cfg.sample_count)
