"""SCAFFOLD: drift correction after each step, control variates, twice the dense bytes."""

from __future__ import annotations

import numpy as np
import torch

from fedkd_mpi.algorithms.baselines import Scaffold
from fedkd_mpi.codecs.svd import TensorSpec
from fedkd_mpi.comm.wire import header_bytes, pack, unpack
from fedkd_mpi.config import load_config

from .conftest import TINY

SPECS = [TensorSpec("w", (3, 2)), TensorSpec("b", (2,))]


def _alg() -> Scaffold:
    alg = Scaffold(load_config(TINY, ["algorithm=scaffold", "train.lr_mentee=0.1"]))
    alg.specs = list(SPECS)
    return alg


def test_round_trip_of_control_variates_and_bytes():
    alg = _alg()
    assert alg.lr == 0.1 and len(alg.wire_specs) == 4
    st: dict = {}
    params = [torch.zeros(s.shape) for s in SPECS]
    for _ in range(4):  # no control variates yet: the correction is zero
        alg.after_step(st, params)
    assert int(st["steps"]) == 4 and all(float(p.abs().sum()) == 0 for p in params)
    delta = [torch.full(s.shape, -0.4) for s in SPECS]
    enc = alg.client_encode(delta, 0, st)
    # c_i+ = c_i - c - delta / (K lr) = 0.4 / (4 * 0.1) = 1
    assert torch.allclose(st["c_i/0"], torch.ones(3, 2))
    buf = pack(0, 0, enc, alg.wire_specs)
    dense = sum(s.numel for s in SPECS)
    assert buf.nbytes == header_bytes(4) + 4 * 2 * dense  # model + control delta, float32
    msg = unpack(buf, alg.wire_specs, alg.wire_body_nbytes(), alg.wire_dtype)
    # server: 2 of the 3 clients sent, the second a zero control delta:
    # c = (|S| / N) mean(dc) = 2/3 * 0.5 = 1/3
    other = alg.client_encode([torch.zeros(s.shape) for s in SPECS], 0, {"steps":
                                                                        torch.tensor(4)})
    down = alg.server_aggregate([msg.encoded, other], np.ones(2), 0)
    assert torch.allclose(alg.server_state["c/0"], torch.full((3, 2), 1 / 3))
    dec = alg.client_decode(down)
    assert torch.allclose(dec[0], torch.full((3, 2), -0.2))  # mean model delta
    # every hosted client stores the new c; the model moves by the mean delta
    theta0 = [torch.ones(s.shape) for s in SPECS]
    p = [t.clone() for t in theta0]
    states = [st, {}]
    alg.apply_update(p, theta0, dec, states)
    assert torch.allclose(p[0], torch.full((3, 2), 0.8))
    assert all(torch.allclose(s["c/0"], torch.full((3, 2), 1 / 3)) for s in states)
    # next round's steps are corrected by -lr (c - c_i) = -0.1 * (1/3 - 1) = +1/15
    q = [torch.zeros(s.shape) for s in SPECS]
    alg.after_step(st, q)
    assert torch.allclose(q[0], torch.full((3, 2), 1 / 15))
