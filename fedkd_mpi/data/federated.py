"""From a config to per-client train/test tensors.

``data.name`` names a :class:`~fedkd_mpi.data.base.Dataset` (the whole corpus) and
``data.partition`` a :class:`~fedkd_mpi.data.base.Partitioner`; :func:`load_federated` holds out
the test data, partitions the rest over all clients and turns the requested clients' examples
into tensors. :func:`check_data` runs the same steps without building tensors (validation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data import wordpiece
from fedkd_mpi.data.base import (
    Corpus,
    DataError,
    Dataset,
    Partitioner,
    dataset_of,
    partitioner_of,
)
from fedkd_mpi.data.text import tokenize
from fedkd_mpi.pretrained import PretrainedError, tokenizer_file
from fedkd_mpi.seeding import rng


@dataclass
class ClientData:
    client_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None  # data.val_fraction > 0: the client's validation split
    val_y: torch.Tensor | None = None

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
    test_label_hist: np.ndarray | None = None  # int64[num_clients, num_classes]: held-out labels
    input_kind: str = "tokens"  # tokens (int64 ids) | images (uint8) | features (float32)
    #: where the data came from (file datasets: data_path, data_bytes, data_sha256, data_rows,
    #: data_dropped_rows, data_test_*): the dataset's ``provenance`` after load(); root attrs
    provenance: dict[str, object] = field(default_factory=dict)
    val_label_hist: np.ndarray | None = None  # the same for the validation splits (if any)


def load_corpus(name: str) -> Corpus:
    """The whole dataset ``name`` (a registered name or module:attribute), checked."""
    cfg = DataConfig(name=name)
    return _load(cfg, dataset_of(cfg))


def check_data(cfg: DataConfig, seed: int) -> Corpus:
    """Validation without tensors: load and check the corpus, hold out the test data and
    partition over all ``data.num_clients`` clients exactly as :func:`load_federated` does
    (nothing is tokenised). DataError (the same one line load_federated would raise) when a
    client would get no training data, the partition is impossible (e.g. fewer examples or
    groups than clients) or needs a grouping key the corpus lacks; PluginError when
    ``data.name`` / ``data.partition`` cannot be resolved. Returns the corpus."""
    dataset, partitioner = dataset_of(cfg), partitioner_of(cfg)
    corpus = _load(cfg, dataset)
    labels = np.asarray(corpus.labels, dtype=np.int64)
    shared_test, parts = _plan(cfg, corpus, labels, partitioner, seed)
    _check_clients(cfg, parts, shared_test is not None)
    return corpus


def load_federated(cfg: DataConfig, seed: int, client_ids: list[int]) -> FederatedData:
    """Load the corpus, partition it over all clients, keep the requested ones.

    ``data.test_protocol``: ``per_client`` holds out ``test_fraction`` of each client's share;
    ``global`` holds out one set first (the official test split when the dataset has one, else
    a seeded ``test_fraction`` of the corpus; at most ``test_samples``), partitions the rest,
    and gives every client the same held-out set, whatever the number of clients.
    Errors as :func:`check_data`.
    """
    dataset, partitioner = dataset_of(cfg), partitioner_of(cfg)
    corpus = _load(cfg, dataset)
    labels = np.asarray(corpus.labels, dtype=np.int64)
    shared_test, parts = _plan(cfg, corpus, labels, partitioner, seed)
    _check_clients(cfg, parts, shared_test is not None)
    sizes = np.zeros(cfg.num_clients, dtype=np.int64)
    hist = np.zeros((cfg.num_clients, len(corpus.class_names)), dtype=np.int64)
    test_hist, val_hist = np.zeros_like(hist), np.zeros_like(hist)
    clients: dict[int, ClientData] = {}
    test_xy = None
    if shared_test is not None and client_ids:
        test_xy = (_features(corpus, shared_test, cfg), torch.from_numpy(labels[shared_test]))
    for c, part in enumerate(parts):
        if shared_test is None:
            perm = rng(seed, "split", c).permutation(part)
            n_test = max(1, round(cfg.test_fraction * len(perm)))
            test, train = perm[:n_test], perm[n_test:]
        else:
            test, train = shared_test, rng(seed, "split", c).permutation(part)
        n_val = _n_val(cfg, len(part))
        val, train = train[:n_val], train[n_val:]
        sizes[c] = len(train)
        hist[c] = np.bincount(labels[train], minlength=hist.shape[1])
        test_hist[c] = np.bincount(labels[test], minlength=hist.shape[1])
        val_hist[c] = np.bincount(labels[val], minlength=hist.shape[1])
        if c in client_ids:
            tx, ty = test_xy if test_xy is not None else (
                _features(corpus, test, cfg), torch.from_numpy(labels[test]))
            clients[c] = ClientData(c, _features(corpus, train, cfg),
                                    torch.from_numpy(labels[train]), tx, ty)
            if n_val:
                clients[c].val_x = _features(corpus, val, cfg)
                clients[c].val_y = torch.from_numpy(labels[val])
    return FederatedData(len(corpus.class_names), corpus.class_names, sizes, clients, hist,
                         test_hist, corpus.input_kind,
                         dict(getattr(dataset, "provenance", None) or {}),
                         val_hist if cfg.val_fraction > 0 else None)


def _load(cfg: DataConfig, dataset: Dataset) -> Corpus:
    """``dataset.load()``, checked against the corpus protocol; DataError (one line) if not."""
    try:
        corpus = dataset.load()
    except DataError:
        raise
    except Exception as exc:  # a plug-in's failure: one line for the user
        raise DataError(f"data error: data.name '{cfg.name}': load() failed: "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(corpus, Corpus):
        raise DataError(f"data error: data.name '{cfg.name}': load() returned a "
                        f"{type(corpus).__name__}, not a fedkd_mpi.data.Corpus")
    corpus.check("data.name")
    if corpus.input_kind != dataset.input_kind:
        raise DataError(f"data error: data.name '{cfg.name}': declares input_kind "
                        f"'{dataset.input_kind}' but its corpus holds {corpus.input_kind}")
    return corpus


def _plan(cfg: DataConfig, corpus: Corpus, labels: np.ndarray, partitioner: Partitioner,
          seed: int) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """The shared held-out set (``global`` protocol; else None) and each client's examples
    (positions into the corpus), all clients, from the seed only."""
    n_all = len(labels)
    shared_test: np.ndarray | None = None
    if cfg.test_protocol == "global":
        gen = rng(seed, "split")
        if corpus.test_idx is not None:
            held = np.asarray(corpus.test_idx)
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
    return shared_test, [idx[p] for p in _partition(cfg, corpus, labels, idx, partitioner, seed)]


def _partition(cfg: DataConfig, corpus: Corpus, labels: np.ndarray, idx: np.ndarray,
               partitioner: Partitioner, seed: int) -> list[np.ndarray]:
    """``data.partition`` over the examples ``idx`` (positions into ``idx``); DataError if not
    possible. ``data.natural_key`` names a column of ``corpus.keys`` (default: corpus.groups)."""
    groups = corpus.groups
    if cfg.natural_key is not None:
        keys = corpus.keys or {}
        if cfg.natural_key not in keys:
            raise DataError(f"data error: 'data.natural_key' '{cfg.natural_key}' is not a key of "
                            f"data.name '{cfg.name}' (valid: {', '.join(keys) or 'none'})")
        groups = keys[cfg.natural_key]
    where = f"data error: data.partition '{cfg.partition}'"
    if partitioner.needs_groups and groups is None:
        raise DataError(f"{where}: this dataset has no natural grouping key")
    try:
        parts = partitioner.split(labels[idx], None if groups is None else np.asarray(groups)[idx],
                                  cfg.num_clients, seed)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    except DataError:
        raise
    except Exception as exc:  # a plug-in's failure: one line for the user
        raise DataError(f"{where}: {type(exc).__name__}: {exc}") from None
    return _checked_parts(parts, len(idx), cfg.num_clients, where)


def _checked_parts(parts: object, n: int, num_clients: int, where: str) -> list[np.ndarray]:
    """A partitioner's result as sorted int64 arrays; DataError unless it is one array of
    distinct positions in [0, n) per client."""
    if not isinstance(parts, (list, tuple)) or len(parts) != num_clients:
        got = len(parts) if isinstance(parts, (list, tuple)) else type(parts).__name__
        raise DataError(f"{where}: returned {got} index arrays for {num_clients} clients")
    out = []
    for c, p in enumerate(parts):
        a = np.asarray(p)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise DataError(f"{where}: client {c}: expected a 1-D integer index array, got "
                            f"{a.dtype} {list(a.shape)}")
        if a.size and (a.min() < 0 or a.max() >= n):
            raise DataError(f"{where}: client {c}: positions must lie in [0, {n})")
        out.append(np.sort(a.astype(np.int64, copy=False)))
    if n and out and np.bincount(np.concatenate(out), minlength=n).max() > 1:
        raise DataError(f"{where}: an example is given to more than one client")
    return out


def _n_val(cfg: DataConfig, n_share: int) -> int:
    """Validation examples of a client with ``n_share`` examples: ``val_fraction`` of its
    share (at least one when asked for), taken from its training part."""
    return max(1, round(cfg.val_fraction * n_share)) if cfg.val_fraction > 0 else 0


def _check_clients(cfg: DataConfig, parts: list[np.ndarray], shared_test: bool) -> None:
    """DataError for the first client left without training examples (per_client: its share
    minus its test_fraction, at least one test example; minus its validation split)."""
    for c, part in enumerate(parts):
        n_train = len(part) if shared_test else len(part) - max(1, round(cfg.test_fraction
                                                                         * len(part)))
        n_train -= _n_val(cfg, len(part))
        if n_train <= 0:
            raise DataError(
                f"data error: client {c} has no training data; lower data.num_clients "
                f"({cfg.num_clients}) or data.test_fraction ({cfg.test_fraction})"
                + (f" or data.val_fraction ({cfg.val_fraction})" if cfg.val_fraction else "")
            )


def _features(corpus: Corpus, idx: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """Model inputs of examples ``idx``: uint8 images, float32 features, or int64 token ids
    [n, max_len]."""
    if corpus.images is not None:
        return torch.from_numpy(np.ascontiguousarray(corpus.images[idx]))
    if corpus.features is not None:
        return torch.from_numpy(np.ascontiguousarray(corpus.features[idx], dtype=np.float32))
    texts = [corpus.texts[i] for i in idx]
    if cfg.tokenizer in ("hash", "auto"):  # unresolved auto (no model section): hash
        return torch.from_numpy(tokenize(texts, cfg.max_len, cfg.vocab_size))
    try:
        path = tokenizer_file(cfg.tokenizer)
    except PretrainedError as exc:
        raise DataError(f"data error: data.tokenizer: {exc}") from None
    return torch.from_numpy(wordpiece.encode(texts, cfg.max_len, path))
