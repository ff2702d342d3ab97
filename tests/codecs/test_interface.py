"""Every built-in codec honours the Codec interface: exact body size, wire dtype, a wire round
trip with its own size rule, decoded shapes, and the documented byte formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd_mpi.aggregators import aggregator_of
from fedkd_mpi.codecs.base import Codec, CodecState, codec_class
from fedkd_mpi.comm.wire import WireError, header_bytes, pack, unpack
from fedkd_mpi.config import load_config
from fedkd_mpi.tensors import DENSE, Payload, TensorSpec

BUILTIN = ["dense", "fedpaq", "powersgd", "svd", "topk"]
SPECS = [TensorSpec("w", (8, 12)), TensorSpec("b", (12,)), TensorSpec("v", (6, 4))]
CFG = load_config(None, ["svd.t_start=0.6", "svd.t_end=0.6", "topk.ratio=0.25",
                         "powersgd.rank=2", "fedpaq.bits=8"])


def _codec(name: str, specs=SPECS, cfg=CFG) -> Codec:
    cls = codec_class(name, "test")
    return cls(cls.settings_from(cfg), specs, cfg.seed, cfg.train.rounds)


def _update(seed: int = 0, specs=SPECS) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s.shape, generator=g) for s in specs]


def _formula(name: str, meta: np.ndarray, specs=SPECS) -> int:
    """The documented body bytes of each codec (module docstrings)."""
    total = 0
    for m, s in zip(meta.tolist(), specs, strict=True):
        p, q, n = s.rows, s.cols, s.numel
        if name == "dense":
            total += 4 * n
        elif name == "svd":  # float32 factors: 4 K (P + Q + 1) per factored matrix
            total += 4 * n if m == DENSE else 4 * m * (p + q + 1)
        elif name == "fedpaq":  # meta = bits
            total += 8 + n * m // 8
        elif name == "topk":  # meta = k
            total += 8 * m
        elif name == "powersgd":  # meta = r
            total += 4 * n if m == DENSE else 4 * m * (p + q)
    return total


def test_registry_lists_the_builtins():
    names = Codec.registry.builtin_names()
    assert set(BUILTIN) <= set(names)
    for name in BUILTIN:
        cls = codec_class(name, "test")
        assert issubclass(cls, Codec) and cls.name == name


@pytest.mark.parametrize("name", BUILTIN)
def test_encode_size_dtype_wire_round_trip_and_shapes(name):
    codec = _codec(name)
    state = codec.new_state(0)
    assert isinstance(state, CodecState) and state.client_id == 0
    assert codec.new_state(None).client_id is None
    ts = _update(1)
    enc = codec.encode(ts, 0, state)
    assert isinstance(enc, Payload)
    assert enc.meta.dtype == np.int64 and enc.meta.shape == (len(SPECS),)
    assert enc.body.ndim == 1
    assert codec.body_nbytes(enc.meta) == enc.body.nbytes
    assert enc.body.dtype == codec.wire_dtype
    buf = pack(7, 3, enc, SPECS)
    assert buf.nbytes == header_bytes(len(SPECS)) + enc.body.nbytes
    msg = unpack(buf, SPECS, codec.body_nbytes, codec.wire_dtype)
    assert (msg.client_id, msg.round, msg.skip) == (7, 3, False)
    assert np.array_equal(msg.encoded.meta, enc.meta)
    assert msg.encoded.body.dtype == codec.wire_dtype
    assert np.array_equal(msg.encoded.body.view(np.uint8), enc.body.view(np.uint8))
    out, direct = codec.decode(msg.encoded), codec.decode(enc)
    assert [tuple(t.shape) for t in out] == [s.shape for s in SPECS]
    assert all(t.dtype == torch.float32 for t in out)
    for a, b in zip(out, direct, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", BUILTIN)
def test_exact_byte_formula(name):
    codec = _codec(name)
    enc = codec.encode(_update(2), 0, codec.new_state(0))
    assert enc.body.nbytes == _formula(name, enc.meta)
    if name == "dense":
        assert enc.meta.tolist() == [DENSE] * 3
    elif name == "svd":  # T = 0.6 on random 8 x 12 and 6 x 4: something factored
        assert enc.meta[1] == DENSE and (enc.meta[[0, 2]] != DENSE).any()
    elif name == "fedpaq":
        assert enc.meta.tolist() == [8] * 3
    elif name == "topk":  # ceil(0.25 numel)
        assert enc.meta.tolist() == [24, 3, 6]
    elif name == "powersgd":  # vector dense; 6 x 4 factored too: 2 (6 + 4) = 20 < 24
        assert enc.meta.tolist() == [2, DENSE, 2]


def test_byte_formulas_at_other_settings():
    """fedpaq at 16 bits and svd with float16 factors (2 bytes a value)."""
    cfg = load_config(None, ["fedpaq.bits=16", "svd.t_start=0.6", "svd.t_end=0.6",
                             "svd.factor_dtype=float16"])
    q = _codec("fedpaq", cfg=cfg)
    enc = q.encode(_update(3), 0, q.new_state(0))
    assert enc.body.nbytes == _formula("fedpaq", enc.meta) == sum(8 + 2 * s.numel for s in SPECS)
    s16, s32 = _codec("svd", cfg=cfg), _codec("svd")
    e16 = s16.encode(_update(3), 0, s16.new_state(0))
    assert s16.wire_dtype == np.float16 and e16.body.dtype == np.float16
    assert 2 * e16.body.nbytes == _formula("svd", e16.meta) == s32.body_nbytes(e16.meta)
    assert s16.body_nbytes(e16.meta) == e16.body.nbytes


@pytest.mark.parametrize("name", BUILTIN)
def test_invalid_meta_is_a_value_error_and_a_wire_error(name):
    codec = _codec(name)
    bad = np.array([-7, -7, -7], dtype=np.int64)  # no codec accepts -7
    with pytest.raises(ValueError):
        codec.body_nbytes(bad)
    enc = codec.encode(_update(4), 0, codec.new_state(0))
    buf = pack(0, 0, Payload(bad, enc.body), SPECS)
    with pytest.raises(WireError):
        unpack(buf, SPECS, codec.body_nbytes, codec.wire_dtype)


@pytest.mark.parametrize("name", BUILTIN)
def test_server_aggregate_round_trip(name):
    codec = _codec(name)
    ups = [codec.encode(_update(10 + c), 0, codec.new_state(c)) for c in range(3)]
    down = codec.aggregate(ups, aggregator_of(CFG), np.array([5, 5, 5]), 0,
                           codec.new_state(None))
    assert codec.body_nbytes(down.meta) == down.body.nbytes
    assert down.body.dtype == codec.wire_dtype
    assert [tuple(t.shape) for t in codec.decode(down)] == [s.shape for s in SPECS]
    if name == "dense":  # lossless: the plain mean
        mean = [sum(_update(10 + c)[i] for c in range(3)) / 3 for i in range(len(SPECS))]
        for a, b in zip(codec.decode(down), mean, strict=True):
            assert torch.allclose(a, b, atol=1e-6)
