"""Partitioners: which example goes to which client. Deterministic from the seed.

Every function returns one sorted int64 index array per client (positions into the examples
it was given) and draws its randomness from ``rng(seed, "partition")`` only, so the split does
not depend on the number of ranks. The registered partitioners ``iid``, ``natural``,
``dirichlet`` and ``shards`` (:class:`~fedkd_mpi.data.base.Partitioner`) wrap them for
``data.partition``; :func:`split` calls them by name without a config.
"""

from __future__ import annotations

import numpy as np

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data.base import Partitioner
from fedkd_mpi.seeding import rng

KINDS = ("iid", "natural", "dirichlet", "shards")


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


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int,
              min_size: int = 2, max_tries: int = 1000) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): per class, shares over clients ~ Dir(alpha).

    Small ``alpha`` gives few classes per client, large ``alpha`` approaches IID. The draw is
    repeated (same generator, so still deterministic) until every client holds at least
    ``min_size`` examples.
    """
    labels = np.asarray(labels)
    if len(labels) < min_size * num_clients:
        raise ValueError(f"{len(labels)} examples cannot give {num_clients} clients "
                         f"{min_size} each")
    gen = rng(seed, "partition")
    classes = np.unique(labels)
    for _ in range(max_tries):
        owner = np.empty(len(labels), dtype=np.int64)
        for c in classes:
            idx = gen.permutation(np.flatnonzero(labels == c))
            share = gen.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
            for client, part in enumerate(np.split(idx, cuts)):
                owner[part] = client
        sizes = np.bincount(owner, minlength=num_clients)
        if sizes.min() >= min_size:
            return [np.flatnonzero(owner == c) for c in range(num_clients)]
    raise ValueError(f"no Dirichlet(alpha={alpha}) draw in {max_tries} gave every one of "
                     f"{num_clients} clients {min_size} examples; raise data.dirichlet_alpha "
                     "or lower data.num_clients")


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int,
           seed: int) -> list[np.ndarray]:
    """McMahan et al. 2017: sort by label, cut into equal shards, deal shards at random."""
    labels = np.asarray(labels)
    n_shards = num_clients * shards_per_client
    if n_shards > len(labels):
        raise ValueError(f"{n_shards} shards (num_clients x shards_per_client) for only "
                         f"{len(labels)} examples")
    gen = rng(seed, "partition")
    perm = gen.permutation(len(labels))  # random order within each label
    by_label = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(by_label, n_shards)
    deal = gen.permutation(n_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in deal]


class IID(Partitioner):
    """``iid``: random equal-size folds."""

    name = "iid"

    def split(self, labels, groups, num_clients, seed):
        return iid(len(labels), num_clients, seed)


class Natural(Partitioner):
    """``natural``: whole groups per client (the grouping key: ``data.natural_key``)."""

    name = "natural"
    needs_groups = True

    def split(self, labels, groups, num_clients, seed):
        if groups is None:
            raise ValueError("this dataset has no natural grouping key")
        return natural(groups, num_clients, seed)


class Dirichlet(Partitioner):
    """``dirichlet``: label skew, per class shares ~ Dir(``data.dirichlet_alpha``)."""

    name = "dirichlet"

    def split(self, labels, groups, num_clients, seed):
        return dirichlet(labels, num_clients, self.cfg.dirichlet_alpha, seed)


class Shards(Partitioner):
    """``shards``: ``data.shards_per_client`` label-sorted shards per client."""

    name = "shards"

    def split(self, labels, groups, num_clients, seed):
        return shards(labels, num_clients, self.cfg.shards_per_client, seed)


BUILTINS: dict[str, type[Partitioner]] = {c.name: c for c in (IID, Natural, Dirichlet, Shards)}


def split(kind: str, labels: np.ndarray, groups: np.ndarray | None, num_clients: int,
          seed: int, alpha: float = 0.5, shards_per_client: int = 2) -> list[np.ndarray]:
    """The built-in partition ``kind``; raises ValueError (one line) when impossible."""
    cls = BUILTINS.get(kind)
    if cls is None:
        raise ValueError(f"unknown partition '{kind}' (valid: {', '.join(KINDS)})")
    cfg = DataConfig(partition=kind, dirichlet_alpha=alpha, shards_per_client=shards_per_client)
    return cls(cfg).split(labels, groups, num_clients, seed)


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """int64[client, class]: examples of each class per client."""
    return np.stack([np.bincount(np.asarray(labels)[p], minlength=num_classes)
                     for p in parts]).astype(np.int64)
