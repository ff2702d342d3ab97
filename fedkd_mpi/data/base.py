"""The data axis: datasets (a whole corpus) and partitioners (which example goes to which client).

A **dataset** is a :class:`Dataset` subclass with a ``name``; ``load()`` returns the whole
corpus as one :class:`Corpus` (the same object on every rank and every call: cache it).
``input_kind`` (class attribute) says what the model will be fed, before anything is loaded:

* ``tokens``: ``texts`` (list of str), turned into int64 token ids by ``data.tokenizer``;
* ``images``: ``images``, uint8 ``[n, C, H, W]``;
* ``features``: ``features``, float ``[n, d]`` (fed as float32).

A **partitioner** is a :class:`Partitioner` subclass with a ``name``; ``split(labels, groups,
num_clients, seed)`` returns one sorted int64 index array per client (positions into the
examples it is given), deterministic from ``seed`` (draw from
``fedkd_mpi.seeding.rng(seed, "partition")``) and never from the number of ranks; it raises
ValueError with one line when the split is impossible. ``needs_groups`` partitioners get the
natural grouping key (``Corpus.groups`` or the ``data.natural_key`` column of ``Corpus.keys``).

Both register like every other axis (:mod:`fedkd_mpi.registry`): built-in modules of this
package, ``module:attribute`` in ``data.name`` / ``data.partition``, or entry points of the
groups ``fedkd_mpi.datasets`` / ``fedkd_mpi.partitioners``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedkd_mpi.config import DataConfig
from fedkd_mpi.registry import PluginError, Registered, Registry

INPUT_KINDS = ("tokens", "images", "features")


class DataError(RuntimeError):
    """Data cannot be found, read or split; the message is one line for the user
    (``data error: ...``)."""


@dataclass(frozen=True, eq=False)
class Corpus:
    """A whole dataset: labels, class names and exactly one of texts / images / features.

    ``groups``: natural-partition key per example (movie, topic, writer, ...); ``keys``: other
    per-example columns selectable by ``data.natural_key``; ``test_idx``: positions of the
    official test split (``data.test_protocol=global`` holds it out).
    """

    labels: np.ndarray  # int64[n]
    class_names: tuple[str, ...]
    texts: list[str] | None = None
    images: np.ndarray | None = None  # uint8[n, C, H, W]
    features: np.ndarray | None = None  # float32[n, d]
    groups: np.ndarray | None = None
    keys: dict[str, np.ndarray] | None = None
    test_idx: np.ndarray | None = None

    @property
    def input_kind(self) -> str:
        """``tokens`` (texts, tokenised by ``data.tokenizer``), ``images`` or ``features``."""
        if self.texts is not None:
            return "tokens"
        return "images" if self.images is not None else "features"

    def __len__(self) -> int:
        return len(self.labels)

    def check(self, field: str) -> None:
        """DataError (one line naming ``field``) unless this corpus keeps the protocol."""

        def bad(why: str) -> DataError:
            return DataError(f"data error: {field}: {why}")

        inputs = [k for k in ("texts", "images", "features") if getattr(self, k) is not None]
        if len(inputs) != 1:
            raise bad(f"the corpus must hold exactly one of texts, images, features (it holds "
                      f"{', '.join(inputs) or 'none'})")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise bad(f"labels must be a 1-D integer array, got {labels.dtype} "
                      f"{list(labels.shape)}")
        n, k = len(labels), len(self.class_names)
        if n and (labels.min() < 0 or labels.max() >= k):
            bad_at = int(np.flatnonzero((labels < 0) | (labels >= k))[0])
            raise bad(f"label {int(labels[bad_at])} at position {bad_at} is outside [0, {k}) "
                      f"({k} class_names)")
        present = len(np.unique(labels))
        if present < 2:
            raise bad(f"{present} class(es) present in {n} labels; a task needs at least 2")
        x = getattr(self, inputs[0])
        if len(x) != n:
            raise bad(f"{len(x)} {inputs[0]} for {n} labels")
        if self.texts is not None and not all(isinstance(t, str) for t in self.texts):
            raise bad("texts must all be str")
        if self.images is not None and (self.images.dtype != np.uint8 or self.images.ndim != 4):
            raise bad(f"images must be uint8 [n, C, H, W], got {self.images.dtype} "
                      f"{list(self.images.shape)}")
        if self.features is not None:
            f = self.features
            if f.ndim != 2 or f.dtype.kind not in "fiu":
                raise bad(f"features must be a real array [n, d], got {f.dtype} {list(f.shape)}")
        columns = {"groups": self.groups, **{f"keys['{c}']": v for c, v in
                                             (self.keys or {}).items()}}
        for name, col in columns.items():
            if col is not None and len(col) != n:
                raise bad(f"{len(col)} {name} for {n} labels")
        if self.test_idx is not None:
            t = np.asarray(self.test_idx)
            if t.ndim != 1 or (t.size and (t.dtype.kind not in "iu" or t.min() < 0
                                           or t.max() >= n)):
                raise bad(f"test_idx must be positions in [0, {n})")


class Dataset(Registered, ABC):
    """Base of every dataset; subclasses set ``name`` and ``input_kind`` to register."""

    registry = Registry("datasets", "fedkd_mpi.data")
    input_kind: ClassVar[str]  # tokens | images | features: what load() will hold

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def load(self) -> Corpus:
        """The whole corpus (cache it: called on every rank, possibly more than once);
        DataError (one line) when it cannot be found or read."""


class Partitioner(Registered, ABC):
    """Base of every partitioner; subclasses set ``name`` to register."""

    registry = Registry("partitioners", "fedkd_mpi.data")
    needs_groups: ClassVar[bool] = False  # True: split() needs the natural grouping key

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def split(self, labels: np.ndarray, groups: np.ndarray | None, num_clients: int,
              seed: int) -> list[np.ndarray]:
        """One sorted int64 index array per client (positions into ``labels``); ValueError
        (one line) when impossible."""


def dataset_class(name: str, field: str = "data.name") -> type[Dataset]:
    """The dataset class named ``name`` (built-in, entry point or module:attribute)."""
    cls = Dataset.registry.get(name, field, Dataset)
    if getattr(cls, "input_kind", None) not in INPUT_KINDS:
        raise PluginError(f"config error: '{field}': {name} has no class attribute "
                          f"'input_kind' ({' | '.join(INPUT_KINDS)})")
    return cls


def dataset_of(cfg: DataConfig) -> Dataset:
    """The dataset named by ``data.name``; PluginError when it cannot be resolved."""
    return dataset_class(cfg.name)(cfg)


def partitioner_of(cfg: DataConfig) -> Partitioner:
    """The partitioner named by ``data.partition``; PluginError when it cannot be resolved."""
    return Partitioner.registry.get(cfg.partition, "data.partition", Partitioner)(cfg)
