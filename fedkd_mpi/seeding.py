"""Random streams keyed by (seed, purpose, round, client), never by rank.

Keying by client id (not rank) is what makes results independent of how many ranks
host the clients.
"""

from __future__ import annotations

import numpy as np

PURPOSES = {"partition": 1, "split": 2, "init": 3, "train": 4, "mentor_init": 5, "wh_init": 6,
            "subsample": 7, "sampling": 8, "quant": 9, "powersgd": 10}


def seed_sequence(seed: int, purpose: str, *keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, PURPOSES[purpose], *[k + 1 for k in keys]])


def rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy generator for one purpose and key tuple."""
    return np.random.default_rng(seed_sequence(seed, purpose, *keys))


def torch_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit integer seed for ``torch.manual_seed`` / ``torch.Generator``."""
    return int(seed_sequence(seed, purpose, *keys).generate_state(1, np.uint64)[0] >> np.uint64(1))
