"""Real data, deterministic partitions and splits, tokenisation."""

from __future__ import annotations

import numpy as np

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data import load_federated, partition, rotten_tomatoes
from fedkd_mpi.data.text import tokenize


def test_corpus_is_the_real_one():
    c = rotten_tomatoes.load()
    assert len(c.labels) == 12_808
    assert int(c.labels.sum()) == 7_403  # fresh
    assert len(set(c.groups.tolist())) > 400


def test_iid_partition_deterministic_and_complete():
    a = partition.iid(1000, 4, seed=1)
    b = partition.iid(1000, 4, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    assert not np.array_equal(a[0], partition.iid(1000, 4, seed=2)[0])


def test_natural_partition_keeps_groups_whole():
    groups = np.array(list("aabbbcddddeeffg"))
    parts = partition.natural(groups, 3, seed=0)
    owners = {}
    for c, p in enumerate(parts):
        for g in set(groups[p]):
            assert owners.setdefault(g, c) == c
    assert sum(len(p) for p in parts) == len(groups)


def test_client_splits_disjoint_and_independent_of_which_clients_are_loaded():
    cfg = DataConfig(num_clients=3, max_samples=300, max_len=16, vocab_size=256)
    all_ = load_federated(cfg, 0, [0, 1, 2])
    one = load_federated(cfg, 0, [1])
    assert np.array_equal(all_.clients[1].train_x, one.clients[1].train_x)
    assert list(all_.sizes) == list(one.sizes)
    assert all_.clients[0].train_x.shape[1] == 16


def test_tokenizer_pads_truncates_and_hashes_stably():
    ids = tokenize(["Good movie", "a " * 100], max_len=8, vocab_size=100)
    assert ids.shape == (2, 8)
    assert ids[0, 0] == 1 and (ids[0, 3:] == 0).all() and (ids[0, 1:3] >= 2).all()
    assert (ids[1] > 0).all()
    assert np.array_equal(ids, tokenize(["Good movie", "a " * 100], 8, 100))
