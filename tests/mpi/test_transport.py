"""Collectives and the update path on a real MPI world (run with mpiexec -n 3 and -n 4)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from mpi4py import MPI

from fedkd_mpi.algorithms.base import FedKD
from fedkd_mpi.codecs.svd import TensorSpec
from fedkd_mpi.comm.mpi import Transport, bcast_bytes, gather_text
from fedkd_mpi.comm.wire import pack, unpack
from fedkd_mpi.config import load_config
from fedkd_mpi.runtime.run import client_ids_of, clients_per_rank

comm = MPI.COMM_WORLD
SPECS = [TensorSpec("a", (24, 16)), TensorSpec("b", (16,)), TensorSpec("c", (2, 16))]


def _delta(cid: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + cid)
    low = torch.randn(24, 2, generator=g) @ torch.randn(2, 16, generator=g)
    return [low + 0.01 * torch.randn(24, 16, generator=g), torch.randn(16, generator=g),
            torch.randn(2, 16, generator=g)]


@pytest.mark.mpi(min_size=3)
def test_world_is_real():
    assert comm.Get_size() >= 3
    names = gather_text(comm, f"{comm.Get_rank()}")
    if comm.Get_rank() == 0:
        assert names == [str(r) for r in range(comm.Get_size())]


@pytest.mark.mpi(min_size=3)
def test_gather_and_broadcast_carry_exact_bytes_in_client_order():
    n = 2 * (comm.Get_size() - 1) + 1  # uneven blocks
    counts = clients_per_rank(n, comm.Get_size())
    tr = Transport(comm, counts, poll_s=0.001)
    alg = FedKD(load_config(None, ["fedkd.t_start=0.9", "fedkd.t_end=0.9"]))
    alg.specs = SPECS
    mine = client_ids_of(comm.Get_rank(), counts)
    msgs = [pack(c, 0, alg.client_encode(_delta(c), 0, {}), SPECS) for c in mine]
    got, _ = tr.gather_messages(msgs)
    if comm.Get_rank() == 0:
        assert len(got) == n
        for c, buf in enumerate(got):
            want = pack(c, 0, alg.client_encode(_delta(c), 0, {}), SPECS)
            assert np.array_equal(buf, want)
            assert unpack(buf, SPECS).client_id == c
        out = pack(-1, 0, alg.server_aggregate([unpack(b, SPECS).encoded for b in got],
                                               np.ones(n), 0), SPECS)
    else:
        assert got == []
        out = None
    buf = tr.broadcast(out)
    update = alg.client_decode(unpack(buf, SPECS).encoded)
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
    counts = clients_per_rank(n, comm.Get_size())
    tr = Transport(comm, counts, poll_s=0.0)
    alg = FedKD(load_config(None, ["fedkd.t_start=1.0", "fedkd.t_end=1.0"]))  # T=1: lossless
    alg.specs = SPECS
    mine = client_ids_of(comm.Get_rank(), counts)
    got, _ = tr.gather_messages([pack(c, 0, alg.client_encode(_delta(c), 0, {}), SPECS)
                                 for c in mine])
    if comm.Get_rank() == 0:
        agg = alg.client_decode(alg.server_aggregate([unpack(b, SPECS).encoded for b in got],
                                                     np.ones(n), 0))
        dense = [sum(_delta(c)[i] for c in range(n)) / n for i in range(len(SPECS))]
        for a, d in zip(agg, dense, strict=True):
            assert torch.allclose(a, d, atol=1e-5)


@pytest.mark.mpi(min_size=3)
def test_control_plane_bytes_broadcast():
    data = bcast_bytes(comm, b"hello \xff" if comm.Get_rank() == 0 else None)
    assert data == b"hello \xff"
