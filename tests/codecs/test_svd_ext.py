"""SVD codec extensions: error feedback (client and server), float16 factors, rank cap."""

from __future__ import annotations

import numpy as np
import torch

from fedkd_mpi.aggregators import aggregator_of
from fedkd_mpi.algorithms.base import ClientState
from fedkd_mpi.algorithms.fedkd import FedKD
from fedkd_mpi.codecs.svd import DENSE, SVDState, TensorSpec, decode
from fedkd_mpi.comm.wire import header_bytes, pack, unpack
from fedkd_mpi.config import load_config

from ..conftest import TINY

SPECS = [TensorSpec("w", (24, 16)), TensorSpec("b", (16,))]


def _alg(*overrides: str) -> FedKD:
    alg = FedKD(load_config(TINY, ["svd.t_start=0.5", "svd.t_end=0.5", *overrides]))
    alg.bind(SPECS, {})
    return alg


def _deltas(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s.shape, generator=g) for s in SPECS]


def test_defaults_are_the_paper_codec():
    alg = _alg()
    assert not alg.codec.extended
    # the paper's wire: float32 body, 4 K (P + Q + 1) bytes per factored matrix, 4 PQ dense
    assert alg.codec.wire_dtype == np.float32
    assert alg.codec.body_nbytes(np.array([3, DENSE])) == 4 * (3 * (24 + 16 + 1) + 16)
    state = alg.new_state(0)
    assert isinstance(state, ClientState) and isinstance(state.codec, SVDState)
    alg.client_encode(_deltas(0), 0, state)
    assert state.codec.residual is None  # no residual kept


def test_error_feedback_residual_is_carried_across_rounds():
    alg = _alg("svd.error_feedback=true")
    state = alg.new_state(0)
    sent = [torch.zeros(s.shape) for s in SPECS]
    total = [torch.zeros(s.shape) for s in SPECS]
    for rnd in range(4):
        d = _deltas(rnd)
        enc = alg.client_encode(d, rnd, state)
        assert enc.meta[0] != DENSE  # T = 0.5 truncates the 24 x 16 matrix
        for i, t in enumerate(decode(enc, SPECS)):
            sent[i] += t
            total[i] += d[i]
        # everything not sent yet is in the residual: sum(sent) + residual == sum(deltas)
        for i in range(len(SPECS)):
            assert torch.allclose(sent[i] + state.codec.residual[i], total[i], atol=1e-4)
    assert float(state.codec.residual[0].norm()) > 0  # the truncation left something behind
    # a residual changes what the next round sends (it is actually fed back)
    fresh = _alg().client_encode(_deltas(9), 4, _alg().new_state(0))
    fed = alg.client_encode(_deltas(9), 4, state)
    assert not np.array_equal(fresh.body, fed.body)


def test_server_error_feedback_lives_in_server_state():
    alg = _alg("svd.error_feedback=true")
    ups = [alg.client_encode(_deltas(i), 0, alg.new_state(i)) for i in range(3)]
    assert alg.server.codec.residual is None
    alg.server_aggregate(ups, aggregator_of(alg.cfg), np.ones(3, dtype=np.int64), 0)
    assert alg.server.codec.client_id is None
    assert len(alg.server.codec.residual) == len(SPECS)  # one residual per tensor
    assert [tuple(r.shape) for r in alg.server.codec.residual] == [s.shape for s in SPECS]
    assert float(alg.server.codec.residual[0].norm()) > 0


def test_float16_factors_halve_the_body_and_count_exactly():
    a32, a16 = _alg(), _alg("svd.factor_dtype=float16")
    d = _deltas(1)
    e32, e16 = a32.client_encode(d, 0, a32.new_state(0)), a16.client_encode(d, 0, a16.new_state(0))
    assert e16.body.dtype == np.float16 and np.array_equal(e32.meta, e16.meta)
    assert e16.body.nbytes * 2 == e32.body.nbytes
    buf = pack(0, 0, e16, SPECS)
    assert buf.nbytes == header_bytes(2) + e16.body.nbytes
    msg = unpack(buf, SPECS, a16.codec.body_nbytes, a16.codec.wire_dtype)
    out16, out32 = a16.client_decode(msg.encoded), a32.client_decode(e32)
    assert all(o.dtype == torch.float32 for o in out16)
    assert torch.allclose(out16[0], out32[0], atol=2e-2, rtol=1e-2)


def test_rank_cap_bounds_every_factored_matrix():
    d = _deltas(2)
    free_alg = _alg("svd.t_start=0.99", "svd.t_end=0.99")
    free = free_alg.client_encode(d, 0, free_alg.new_state(0))
    capped = _alg("svd.t_start=0.99", "svd.t_end=0.99", "svd.max_rank=3")
    enc = capped.client_encode(d, 0, capped.new_state(0))
    assert free.meta[0] > 3 or free.meta[0] == DENSE
    assert enc.meta[0] == 3
    assert enc.body.size == 3 * (24 + 16 + 1) + 16
