"""From a config to per-client train/test tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data import partition, rotten_tomatoes
from fedkd_mpi.data.rotten_tomatoes import DataError
from fedkd_mpi.data.text import tokenize
from fedkd_mpi.seeding import rng


@dataclass
class ClientData:
    client_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.train_y.numel())


@dataclass
class FederatedData:
    num_classes: int
    class_names: tuple[str, ...]
    sizes: np.ndarray  # int64[num_clients]: training examples per client
    clients: dict[int, ClientData]


def load_federated(cfg: DataConfig, seed: int, client_ids: list[int]) -> FederatedData:
    """Load the corpus, partition it over all clients, keep the requested ones."""
    if cfg.name != "rotten_tomatoes":  # pragma: no cover - schema forbids it
        raise DataError(f"data error: unknown data.name '{cfg.name}'")
    corpus = rotten_tomatoes.load()
    idx = np.arange(len(corpus.labels))
    if cfg.max_samples is not None and cfg.max_samples < len(idx):
        idx = np.sort(rng(seed, "subsample").choice(idx, cfg.max_samples, replace=False))
    if cfg.partition == "iid":
        parts = [idx[p] for p in partition.iid(len(idx), cfg.num_clients, seed)]
    else:
        try:
            parts = [idx[p] for p in partition.natural(corpus.groups[idx], cfg.num_clients, seed)]
        except ValueError as exc:
            raise DataError(f"data error: data.partition 'natural': {exc}") from None
    sizes = np.zeros(cfg.num_clients, dtype=np.int64)
    clients: dict[int, ClientData] = {}
    for c, part in enumerate(parts):
        perm = rng(seed, "split", c).permutation(part)
        n_test = max(1, round(cfg.test_fraction * len(perm)))
        test, train = perm[:n_test], perm[n_test:]
        if len(train) == 0:
            raise DataError(
                f"data error: client {c} has no training data; lower data.num_clients "
                f"({cfg.num_clients}) or data.test_fraction ({cfg.test_fraction})"
            )
        sizes[c] = len(train)
        if c in client_ids:
            clients[c] = ClientData(
                c,
                torch.from_numpy(_tok(corpus.texts, train, cfg)),
                torch.from_numpy(corpus.labels[train]),
                torch.from_numpy(_tok(corpus.texts, test, cfg)),
                torch.from_numpy(corpus.labels[test]),
            )
    return FederatedData(len(corpus.class_names), corpus.class_names, sizes, clients)


def _tok(texts: list[str], idx: np.ndarray, cfg: DataConfig) -> np.ndarray:
    return tokenize([texts[i] for i in idx], cfg.max_len, cfg.vocab_size)
