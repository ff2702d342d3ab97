"""SCAFFOLD: drift correction after each step, control variates, twice the dense bytes."""

from __future__ import annotations

import numpy as np
import torch

from fedkd_mpi.aggregators import aggregator_of
from fedkd_mpi.algorithms.scaffold import Scaffold, ScaffoldState
from fedkd_mpi.comm.wire import header_bytes, pack, unpack
from fedkd_mpi.config import load_config
from fedkd_mpi.tensors import TensorSpec

from ..conftest import TINY

SPECS = [TensorSpec("w", (3, 2)), TensorSpec("b", (2,))]


def _alg() -> Scaffold:
    alg = Scaffold(load_config(TINY, ["algorithm=scaffold", "train.lr_mentee=0.1"]))
    alg.bind(SPECS, {})
    return alg


def test_round_trip_of_control_variates_and_bytes():
    alg = _alg()
    assert alg.lr == 0.1 and len(alg.wire_specs) == 4
    assert alg.codec.name == "dense"  # fedavg.codec default
    st = alg.new_state(0)
    assert isinstance(st.alg, ScaffoldState)
    params = [torch.zeros(s.shape) for s in SPECS]
    for _ in range(4):  # no control variates yet: the correction is zero
        alg.after_step(st, params)
    assert int(st.alg.steps) == 4 and all(float(p.abs().sum()) == 0 for p in params)
    delta = [torch.full(s.shape, -0.4) for s in SPECS]
    enc = alg.client_encode(delta, 0, st)
    # c_i+ = c_i - c - delta / (K lr) = 0.4 / (4 * 0.1) = 1
    assert torch.allclose(st.alg.c_i[0], torch.ones(3, 2))
    assert st.alg.steps == 0  # reset for the next round
    buf = pack(0, 0, enc, alg.wire_specs)
    dense = sum(s.numel for s in SPECS)
    assert buf.nbytes == header_bytes(4) + 4 * 2 * dense  # model + control delta, float32
    msg = unpack(buf, alg.wire_specs, alg.codec.body_nbytes, alg.codec.wire_dtype)
    # server: 2 of the 3 clients sent, the second a zero control delta:
    # c = (|S| / N) mean(dc) = 2/3 * 0.5 = 1/3
    other_state = alg.new_state(1)
    other_state.alg.steps = 4
    other = alg.client_encode([torch.zeros(s.shape) for s in SPECS], 0, other_state)
    down = alg.server_aggregate([msg.encoded, other], aggregator_of(alg.cfg),
                                np.array([10, 10]), 0)
    assert torch.allclose(alg.server.alg.c[0], torch.full((3, 2), 1 / 3))
    dec = alg.client_decode(down)
    assert torch.allclose(dec[0], torch.full((3, 2), -0.2))  # mean model delta
    # every hosted client stores the new c; the model moves by the mean delta
    theta0 = [torch.ones(s.shape) for s in SPECS]
    p = [t.clone() for t in theta0]
    states = [st, alg.new_state(2)]
    alg.apply_update(p, theta0, dec, states)
    assert torch.allclose(p[0], torch.full((3, 2), 0.8))
    assert all(torch.allclose(s.alg.c[0], torch.full((3, 2), 1 / 3)) for s in states)
    # next round's steps are corrected by -lr (c - c_i) = -0.1 * (1/3 - 1) = +1/15
    q = [torch.zeros(s.shape) for s in SPECS]
    alg.after_step(st, q)
    assert torch.allclose(q[0], torch.full((3, 2), 1 / 15))
