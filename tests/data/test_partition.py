"""Partitioners (iid, natural, dirichlet, shards): complete, disjoint, deterministic, skewed."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data import load_federated, partition
from fedkd_mpi.data.rotten_tomatoes import DataError

LABELS = np.repeat(np.arange(4), [300, 250, 250, 200])


def _check_partition(parts, n):
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(n)), "complete and disjoint"
    assert all((np.diff(p) > 0).all() for p in parts), "sorted"


@pytest.mark.parametrize("kind", partition.KINDS)
def test_every_kind_is_a_deterministic_partition(kind):
    groups = np.arange(len(LABELS)) % 37
    a = partition.split(kind, LABELS, groups, 6, seed=5, alpha=0.3, shards_per_client=3)
    b = partition.split(kind, LABELS, groups, 6, seed=5, alpha=0.3, shards_per_client=3)
    c = partition.split(kind, LABELS, groups, 6, seed=6, alpha=0.3, shards_per_client=3)
    assert len(a) == 6
    _check_partition(a, len(LABELS))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_alpha_controls_label_skew():
    def skew(alpha):
        parts = partition.dirichlet(LABELS, 8, alpha, seed=1)
        h = partition.label_histogram(LABELS, parts, 4).astype(float)
        share = h / h.sum(1, keepdims=True)
        return float(share.max(1).mean())  # mean share of each client's top class

    low, high = skew(0.05), skew(1000.0)
    assert low > 0.6 and high < 0.4, (low, high)
    parts = partition.dirichlet(LABELS, 8, 0.05, seed=1)
    assert min(len(p) for p in parts) >= 2


def test_dirichlet_impossible_is_one_line_error():
    with pytest.raises(ValueError, match="examples cannot give"):
        partition.dirichlet(LABELS[:10], 8, 0.5, seed=0)


def test_shards_give_each_client_few_labels():
    parts = partition.shards(LABELS, 10, 2, seed=0)
    h = partition.label_histogram(LABELS, parts, 4)
    assert ((h > 0).sum(1) <= 3).all()  # 2 shards: at most 2 labels, +1 where a shard straddles
    assert {len(p) for p in parts} <= {99, 100, 101, 102}
    with pytest.raises(ValueError, match="shards"):
        partition.shards(LABELS[:5], 3, 2, seed=0)


def test_label_histogram_counts():
    parts = [np.array([0, 1, 300]), np.array([999])]
    h = partition.label_histogram(LABELS, parts, 4)
    assert h.tolist() == [[2, 1, 0, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize("kind", partition.KINDS)
def test_load_federated_every_partition_records_sizes_and_histograms(kind):
    cfg = DataConfig(num_clients=4, max_samples=400, max_len=8, vocab_size=128, partition=kind,
                     tokenizer="hash",
                     dirichlet_alpha=0.5, shards_per_client=2)
    fed = load_federated(cfg, 0, [0, 1, 2, 3])
    assert fed.label_hist.shape == (4, 2)
    assert np.array_equal(fed.label_hist.sum(1), fed.sizes)
    for c, cd in fed.clients.items():
        assert np.array_equal(np.bincount(cd.train_y.numpy(), minlength=2), fed.label_hist[c])


def test_unknown_natural_key_is_a_data_error():
    cfg = DataConfig(num_clients=2, max_samples=100, partition="natural", natural_key="nope",
                     tokenizer="hash")
    with pytest.raises(DataError, match=r"data\.natural_key"):
        load_federated(cfg, 0, [0])
