"""From a config to per-client train/test tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data import partition, rotten_tomatoes, wordpiece
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
    label_hist: np.ndarray | None = None  # int64[num_clients, num_classes]: training labels


def load_corpus(name: str):
    """The whole dataset ``name`` (texts or images, labels, optional groups / official test)."""
    if name == "bbc_news":
        from fedkd_mpi.data import bbc_news

        return bbc_news.load()
    if name == "fashion_mnist":
        from fedkd_mpi.data import fashion_mnist

        return fashion_mnist.load()
    if name == "rotten_tomatoes":
        return rotten_tomatoes.load()
    raise DataError(f"data error: unknown data.name '{name}'")  # pragma: no cover - schema


def load_federated(cfg: DataConfig, seed: int, client_ids: list[int]) -> FederatedData:
    """Load the corpus, partition it over all clients, keep the requested ones.

    ``data.test_protocol``: ``per_client`` holds out ``test_fraction`` of each client's share;
    ``global`` holds out one set first (the official test split when the dataset has one, else
    a seeded ``test_fraction`` of the corpus; at most ``test_samples``), partitions the rest,
    and gives every client the same held-out set, whatever the number of clients.
    """
    corpus = load_corpus(cfg.name)
    n_all = len(corpus.labels)
    shared_test: np.ndarray | None = None
    if cfg.test_protocol == "global":
        gen = rng(seed, "split")
        official = getattr(corpus, "test_idx", None)
        if official is not None:
            held = np.asarray(official)
        else:
            held = gen.permutation(n_all)[: max(1, round(cfg.test_fraction * n_all))]
        idx = np.setdiff1d(np.arange(n_all), held)  # training pool: never the held-out set
        shared_test = np.sort(held)
        if cfg.test_samples is not None and cfg.test_samples < len(shared_test):
            shared_test = np.sort(gen.choice(shared_test, cfg.test_samples, replace=False))
    else:
        idx = np.arange(n_all)
    if cfg.max_samples is not None and cfg.max_samples < len(idx):
        idx = np.sort(rng(seed, "subsample").choice(idx, cfg.max_samples, replace=False))
    parts = [idx[p] for p in _partition(cfg, corpus, idx, seed)]
    sizes = np.zeros(cfg.num_clients, dtype=np.int64)
    hist = np.zeros((cfg.num_clients, len(corpus.class_names)), dtype=np.int64)
    clients: dict[int, ClientData] = {}
    test_xy = None
    if shared_test is not None and client_ids:
        test_xy = (_features(corpus, shared_test, cfg),
                   torch.from_numpy(corpus.labels[shared_test]))
    for c, part in enumerate(parts):
        if shared_test is None:
            perm = rng(seed, "split", c).permutation(part)
            n_test = max(1, round(cfg.test_fraction * len(perm)))
            test, train = perm[:n_test], perm[n_test:]
        else:
            test, train = shared_test, rng(seed, "split", c).permutation(part)
        if len(train) == 0:
            raise DataError(
                f"data error: client {c} has no training data; lower data.num_clients "
                f"({cfg.num_clients}) or data.test_fraction ({cfg.test_fraction})"
            )
        sizes[c] = len(train)
        hist[c] = np.bincount(corpus.labels[train], minlength=hist.shape[1])
        if c in client_ids:
            tx, ty = test_xy if test_xy is not None else (
                _features(corpus, test, cfg), torch.from_numpy(corpus.labels[test]))
            clients[c] = ClientData(c, _features(corpus, train, cfg),
                                    torch.from_numpy(corpus.labels[train]), tx, ty)
    return FederatedData(len(corpus.class_names), corpus.class_names, sizes, clients, hist)


def _partition(cfg: DataConfig, corpus, idx: np.ndarray, seed: int) -> list[np.ndarray]:
    """``data.partition`` over the examples ``idx`` (positions into ``idx``); DataError if not
    possible. ``data.natural_key`` names a column of ``corpus.keys`` (default: corpus.groups)."""
    groups = getattr(corpus, "groups", None)
    if cfg.natural_key is not None:
        keys = getattr(corpus, "keys", None) or {}
        if cfg.natural_key not in keys:
            raise DataError(f"data error: 'data.natural_key' '{cfg.natural_key}' is not a key of "
                            f"data.name '{cfg.name}' (valid: {', '.join(keys) or 'none'})")
        groups = keys[cfg.natural_key]
    try:
        return partition.split(cfg.partition, corpus.labels[idx],
                               None if groups is None else np.asarray(groups)[idx],
                               cfg.num_clients, seed, cfg.dirichlet_alpha, cfg.shards_per_client)
    except ValueError as exc:
        raise DataError(f"data error: data.partition '{cfg.partition}': {exc}") from None


def _features(corpus, idx: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """Model inputs of examples ``idx``: uint8 images, or int64 token ids [n, max_len]."""
    images = getattr(corpus, "images", None)
    if images is not None:
        return torch.from_numpy(np.ascontiguousarray(images[idx]))
    texts = [corpus.texts[i] for i in idx]
    if cfg.tokenizer in ("hash", "auto"):  # unresolved auto (no model section): hash
        return torch.from_numpy(tokenize(texts, cfg.max_len, cfg.vocab_size))
    from fedkd_mpi.models.hf import PretrainedError, tokenizer_file

    try:
        path = tokenizer_file(cfg.tokenizer)
    except PretrainedError as exc:
        raise DataError(f"data error: data.tokenizer: {exc}") from None
    return torch.from_numpy(wordpiece.encode(texts, cfg.max_len, path))
