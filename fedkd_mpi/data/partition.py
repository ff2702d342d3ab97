"""Partitioners: which example goes to which client. Deterministic from the seed."""

from __future__ import annotations

import numpy as np

from fedkd_mpi.seeding import rng


def iid(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Random equal-size folds (the paper's random 4-fold split)."""
    perm = rng(seed, "partition").permutation(n)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def natural(groups: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Whole groups (e.g. movies) per client: shuffled groups, each to the smallest client."""
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(names) < num_clients:
        raise ValueError(f"only {len(names)} groups for {num_clients} clients")
    order = rng(seed, "partition").permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]  # big groups first, ties random
    load = np.zeros(num_clients, dtype=np.int64)
    owner = np.empty(len(names), dtype=np.int64)
    for g in order:
        c = int(np.argmin(load))
        owner[g] = c
        load[c] += counts[g]
    return [np.flatnonzero(owner[inverse] == c) for c in range(num_clients)]
