"""Client placement: one map client id <-> (rank, local index) for launch, transport, server."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd_mpi.comm.placement import Placement


@pytest.mark.parametrize("clients, world", [(3, 2), (3, 4), (10, 4), (7, 3), (100, 9)])
def test_blocks_are_contiguous_near_equal_and_consistent(clients, world):
    p = Placement(clients, world)
    assert p.counts[0] == 0 and p.counts.sum() == clients
    assert p.counts[1:].max() - p.counts[1:].min() <= 1
    seen = []
    for rank in range(world):
        cids = p.clients_of(rank)
        seen += cids
        for i, cid in enumerate(cids):
            assert p.rank_of(cid) == rank and p.local_index(cid) == i
    assert seen == list(range(clients))  # client id order is rank order
    assert np.array_equal(p.client_rank, [p.rank_of(c) for c in range(clients)])


def test_same_map_as_numpy_array_split():
    p = Placement(10, 4)
    blocks = np.array_split(np.arange(10), 3)
    assert [p.clients_of(r) for r in (1, 2, 3)] == [b.tolist() for b in blocks]


def test_out_of_range_and_too_few_ranks():
    with pytest.raises(IndexError):
        Placement(3, 2).rank_of(3)
    with pytest.raises(ValueError):
        Placement(3, 1)
