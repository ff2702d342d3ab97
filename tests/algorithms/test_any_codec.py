"""Any algorithm travels with any codec: FedKD with every built-in codec, FedAvg with SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd_mpi.aggregators import aggregator_of
from fedkd_mpi.algorithms import ClientState, build_algorithm
from fedkd_mpi.algorithms.fedavg import FedAvg
from fedkd_mpi.algorithms.fedkd import FedKD
from fedkd_mpi.codecs import svd
from fedkd_mpi.comm.wire import pack, unpack
from fedkd_mpi.config import ConfigError, load_config
from fedkd_mpi.tensors import TensorSpec

SPECS = [TensorSpec("w", (16, 10)), TensorSpec("b", (10,)), TensorSpec("conv", (6, 2, 3, 3))]
CODECS = ["svd", "topk", "powersgd", "fedpaq", "dense"]


def _delta(cid: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(50 + cid)
    return [torch.randn(s.shape, generator=g) for s in SPECS]


def _round_trip(alg, n_clients: int = 3) -> list[torch.Tensor]:
    """Encode on every client, through the wire, aggregate on the server, decode."""
    codec = alg.codec
    ups = []
    for c in range(n_clients):
        state = alg.new_state(c)
        assert isinstance(state, ClientState) and state.codec.client_id == c
        enc = alg.client_encode(_delta(c), 0, state)
        assert codec.body_nbytes(enc.meta) == enc.body.nbytes
        assert enc.body.dtype == codec.wire_dtype
        msg = unpack(pack(c, 0, enc, alg.wire_specs), alg.wire_specs, codec.body_nbytes,
                     codec.wire_dtype)
        ups.append(msg.encoded)
    down = alg.server_aggregate(ups, aggregator_of(alg.cfg),
                                np.full(n_clients, 10, dtype=np.int64), 0)
    assert codec.body_nbytes(down.meta) == down.body.nbytes
    msg = unpack(pack(-1, 0, down, alg.wire_specs), alg.wire_specs, codec.body_nbytes,
                 codec.wire_dtype)
    out = alg.client_decode(msg.encoded)
    assert [tuple(t.shape) for t in out] == [s.shape for s in alg.wire_specs]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in out)
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_fedkd_with_any_codec(codec):
    alg = build_algorithm(load_config(None, [f"fedkd.codec={codec}", "svd.t_start=0.8",
                                             "svd.t_end=0.9", "topk.ratio=0.2"]))
    assert isinstance(alg, FedKD)
    alg.bind(SPECS, {})
    assert alg.codec.name == codec and alg.wire_specs == SPECS
    assert alg.server.codec.client_id is None
    out = _round_trip(alg)
    if codec == "dense":  # lossless: the plain mean of the three updates
        mean = [sum(_delta(c)[i] for c in range(3)) / 3 for i in range(len(SPECS))]
        for a, b in zip(out, mean, strict=True):
            assert torch.allclose(a, b, atol=1e-6)
    if codec == "svd":
        assert alg.energy_threshold(0) == pytest.approx(
            svd.energy_threshold(0.8, 0.9, 0, alg.cfg.train.rounds, alg.cfg.svd.schedule))
    else:
        assert alg.energy_threshold(0) is None


def test_fedavg_with_svd():
    cfg = load_config(None, ["algorithm=fedavg", "fedavg.codec=svd", "svd.t_start=0.7",
                             "svd.t_end=0.9", "train.rounds=4"])
    alg = build_algorithm(cfg)
    assert type(alg) is FedAvg
    alg.bind(SPECS, {})
    assert alg.codec.name == "svd" and alg.codec.wire_dtype == np.float32
    s = cfg.svd
    want = svd.energy_threshold(s.t_start, s.t_end, 0, cfg.train.rounds, s.schedule)
    assert alg.energy_threshold(0) == pytest.approx(want)
    assert want == pytest.approx(0.7 + 0.2 * 1 / 4)  # Eq. 9, schedule "code": t = 1/R
    assert alg.energy_threshold(3) == pytest.approx(0.9)
    _round_trip(alg)


def test_fedavg_defaults_to_dense_and_aliases_fix_the_codec():
    alg = build_algorithm(load_config(None, ["algorithm=fedavg"]))
    alg.bind(SPECS, {})
    assert alg.codec.name == "dense" and alg.energy_threshold(0) is None
    for name in ("topk", "powersgd", "fedpaq"):
        a = build_algorithm(load_config(None, [f"algorithm={name}"]))
        a.bind(SPECS, {})
        assert isinstance(a, FedAvg) and a.codec.name == name
        _round_trip(a)
    clash = build_algorithm(load_config(None, ["algorithm=topk", "fedavg.codec=svd"]))
    with pytest.raises(ConfigError, match=r"fedavg\.codec"):
        clash.bind(SPECS, {})


def test_encoding_before_bind_is_an_error():
    alg = build_algorithm(load_config(None, ["algorithm=fedavg"]))
    with pytest.raises(RuntimeError, match="bind"):
        alg.client_encode(_delta(0), 0, alg.new_state(0))
