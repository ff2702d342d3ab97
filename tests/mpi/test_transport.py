"""Collectives and the update path on a real MPI world (run with mpiexec -n 3 and -n 4)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from mpi4py import MPI

from fedkd_mpi.aggregators import aggregator_of
from fedkd_mpi.algorithms.fedkd import FedKD
from fedkd_mpi.comm.mpi import Transport, bcast_bytes, gather_text
from fedkd_mpi.comm.placement import Placement
from fedkd_mpi.comm.wire import pack, unpack
from fedkd_mpi.config import load_config
from fedkd_mpi.tensors import TensorSpec

comm = MPI.COMM_WORLD
SPECS = [TensorSpec("a", (24, 16)), TensorSpec("b", (16,)), TensorSpec("c", (2, 16))]


def _delta(cid: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + cid)
    low = torch.randn(24, 2, generator=g) @ torch.randn(2, 16, generator=g)
    return [low + 0.01 * torch.randn(24, 16, generator=g), torch.randn(16, generator=g),
            torch.randn(2, 16, generator=g)]


def _fedkd(t: float) -> FedKD:
    alg = FedKD(load_config(None, [f"svd.t_start={t}", f"svd.t_end={t}"]))
    alg.bind(SPECS, {})
    return alg


def _unpack(alg: FedKD, buf: np.ndarray):
    return unpack(buf, SPECS, alg.codec.body_nbytes, alg.codec.wire_dtype)


@pytest.mark.mpi(min_size=3)
def test_world_is_real():
    assert comm.Get_size() >= 3
    names = gather_text(comm, f"{comm.Get_rank()}")
    if comm.Get_rank() == 0:
        assert names == [str(r) for r in range(comm.Get_size())]


@pytest.mark.mpi(min_size=3)
def test_gather_and_broadcast_carry_exact_bytes_in_client_order():
    n = 2 * (comm.Get_size() - 1) + 1  # uneven blocks
    placement = Placement(n, comm.Get_size())
    assert placement.counts[0] == 0 and int(placement.counts.sum()) == n
    tr = Transport(comm, placement, poll_s=0.001)
    alg = _fedkd(0.9)
    mine = placement.clients_of(comm.Get_rank())
    assert all(placement.rank_of(c) == comm.Get_rank() for c in mine)
    assert [placement.local_index(c) for c in mine] == list(range(len(mine)))
    msgs = [pack(c, 0, alg.client_encode(_delta(c), 0, alg.new_state(c)), SPECS) for c in mine]
    got, _ = tr.gather_messages(msgs)
    if comm.Get_rank() == 0:
        assert len(got) == n
        for c, buf in enumerate(got):
            want = pack(c, 0, alg.client_encode(_delta(c), 0, alg.new_state(c)), SPECS)
            assert np.array_equal(buf, want)
            assert _unpack(alg, buf).client_id == c
        out = pack(-1, 0, alg.server_aggregate([_unpack(alg, b).encoded for b in got],
                                               aggregator_of(alg.cfg),
                                               np.ones(n, dtype=np.int64), 0), SPECS)
    else:
        assert got == []
        out = None
    buf = tr.broadcast(out)
    update = alg.client_decode(_unpack(alg, buf).encoded)
    crc = np.array([zlib.crc32(b"".join(t.numpy().tobytes() for t in update))], np.int64)
    every = np.empty(comm.Get_size(), np.int64)
    comm.Allgather(crc, every)
    assert (every == every[0]).all(), "every rank must decode the same bits"
    size = np.array([buf.size], np.int64)
    sizes = np.empty(comm.Get_size(), np.int64)
    comm.Allgather(size, sizes)
    assert (sizes == sizes[0]).all()


@pytest.mark.mpi(min_size=3)
def test_server_mean_matches_dense_mean_within_codec_error():
    n = comm.Get_size() - 1
    placement = Placement(n, comm.Get_size())
    tr = Transport(comm, placement, poll_s=0.0)
    alg = _fedkd(1.0)  # T=1: lossless
    mine = placement.clients_of(comm.Get_rank())
    got, _ = tr.gather_messages([pack(c, 0, alg.client_encode(_delta(c), 0, alg.new_state(c)),
                                      SPECS) for c in mine])
    if comm.Get_rank() == 0:
        agg = alg.client_decode(alg.server_aggregate([_unpack(alg, b).encoded for b in got],
                                                     aggregator_of(alg.cfg),
                                                     np.ones(n, dtype=np.int64), 0))
        dense = [sum(_delta(c)[i] for c in range(n)) / n for i in range(len(SPECS))]
        for a, d in zip(agg, dense, strict=True):
            assert torch.allclose(a, d, atol=1e-5)


@pytest.mark.mpi(min_size=3)
def test_control_plane_bytes_broadcast():
    data = bcast_bytes(comm, b"hello \xff" if comm.Get_rank() == 0 else None)
    assert data == b"hello \xff"
