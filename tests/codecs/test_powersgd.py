"""PowerSGD codec: rank of the reconstruction, warm start, error feedback, exact bytes."""

from __future__ import annotations

import copy

import numpy as np
import torch

from fedkd_mpi.codecs import powersgd
from fedkd_mpi.comm.wire import header_bytes, pack, unpack
from fedkd_mpi.config import load_config
from fedkd_mpi.tensors import DENSE, TensorSpec

SPECS = [TensorSpec("w", (20, 12)), TensorSpec("b", (12,)), TensorSpec("s", (3, 2))]


def _ts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s.shape, generator=g) for s in SPECS]


def test_reconstruction_has_the_requested_rank_and_small_matrices_go_dense():
    st = powersgd.PowerSGDState()
    ts = _ts()
    enc = powersgd.encode(ts, SPECS, 2, st, torch.Generator().manual_seed(1))
    assert list(enc.meta) == [2, DENSE, DENSE]  # vector dense; 2*(3+2) >= 6 dense
    out = powersgd.decode(enc, SPECS)
    assert int(torch.linalg.matrix_rank(out[0])) == 2
    assert torch.equal(out[1], ts[1]) and torch.equal(out[2], ts[2])
    # state only for the factored tensor: its warm start Q and residual
    assert st.q[1:] == [None, None] and st.err[1:] == [None, None]
    assert st.q[0].shape == (12, 2)
    assert torch.allclose(out[0] + st.err[0], ts[0], atol=1e-5)  # residual = what was left


def test_warm_start_converges_to_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    v, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    sig = torch.tensor([10.0, 5.0] + [0.5 ** i for i in range(10)])
    m = (u[:, :12] * sig) @ v.T
    st = powersgd.PowerSGDState()
    best = (u[:, :2] * sig[:2]) @ v[:, :2].T
    errs = []
    for _ in range(6):  # same matrix every round, no feedback: power iteration across rounds
        enc = powersgd.encode([m], SPECS[:1], 2, st, g, error_feedback=False)
        errs.append(float((powersgd.decode(enc, SPECS[:1])[0] - best).norm()))
    assert errs[-1] < 1e-3 and errs[-1] < errs[0]


def test_error_feedback_sum_of_sent_updates_tracks_the_sum_of_deltas():
    g = torch.Generator().manual_seed(3)
    st = powersgd.PowerSGDState()
    sent = torch.zeros(20, 12)
    total = torch.zeros(20, 12)
    for rnd in range(5):
        d = torch.randn(20, 12, generator=g)
        total += d
        sent += powersgd.decode(powersgd.encode([d], SPECS[:1], 1, st, g), SPECS[:1])[0]
        # invariant of error feedback: everything not yet sent is in the residual
        assert torch.allclose(sent + st.err[0], total, atol=1e-4), rnd


def test_bytes_on_the_wire_are_exactly_the_formula():
    enc = powersgd.encode(_ts(), SPECS, 3, powersgd.PowerSGDState(),
                          torch.Generator().manual_seed(0))
    want = 4 * (3 * (20 + 12) + 12 + 6)
    assert enc.body.nbytes == want == powersgd.body_nbytes(SPECS)(enc.meta)
    buf = pack(1, 2, enc, SPECS)
    assert buf.nbytes == header_bytes(3) + want
    msg = unpack(buf, SPECS, body_nbytes=powersgd.body_nbytes(SPECS), dtype=np.float32)
    assert torch.equal(powersgd.decode(msg.encoded, SPECS)[0], powersgd.decode(enc, SPECS)[0])


def test_codec_object_keeps_its_state_per_client_and_checkpoints_it():
    cfg = load_config(None, ["powersgd.rank=2"])
    codec = powersgd.PowerSGDCodec(powersgd.PowerSGDCodec.settings_from(cfg), SPECS, cfg.seed,
                                   cfg.train.rounds)
    st = codec.new_state(3)
    assert isinstance(st, powersgd.PowerSGDState) and st.client_id == 3 and st.q is None
    ts = _ts(4)
    enc = codec.encode(ts, 0, st)
    assert list(enc.meta) == [2, DENSE, DENSE] and enc.body.dtype == codec.wire_dtype
    assert codec.body_nbytes(enc.meta) == enc.body.nbytes == 4 * (2 * (20 + 12) + 12 + 6)
    out = codec.decode(enc)
    assert torch.allclose(out[0] + st.err[0], ts[0], atol=1e-5)  # error feedback is on
    # the state round-trips through state_dict / load_state_dict (state_dict holds references,
    # like torch's: a checkpoint or spill copies it)
    again = codec.new_state(3)
    again.load_state_dict(copy.deepcopy(st.state_dict()))
    assert torch.equal(again.q[0], st.q[0]) and torch.equal(again.err[0], st.err[0])
    nxt = [torch.randn(s.shape, generator=torch.Generator().manual_seed(5)) for s in SPECS]
    a, b = codec.encode(nxt, 1, st), codec.encode(nxt, 1, again)
    assert np.array_equal(a.body, b.body)
