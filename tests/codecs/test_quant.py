"""FedPAQ quantisation codec: error bound, unbiasedness, exact byte count on the wire."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkd_mpi.codecs import quant
from fedkd_mpi.comm.wire import header_bytes, pack, unpack
from fedkd_mpi.config import load_config
from fedkd_mpi.tensors import TensorSpec

SPECS = [TensorSpec("w", (7, 5)), TensorSpec("b", (5,)), TensorSpec("z", (3, 3))]


def _tensors(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(s.shape, generator=g) * (i + 1) for i, s in enumerate(SPECS)]
    t[2].zero_()  # a constant tensor: scale 0
    return t


@pytest.mark.parametrize("bits", [8, 16])
@given(seed=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_nearest_error_is_at_most_half_a_step(bits, seed):
    ts = _tensors(seed)
    enc = quant.encode(ts, SPECS, bits)
    out = quant.decode(enc, SPECS)
    for t, o in zip(ts, out, strict=True):
        step = float(t.max() - t.min()) / (2**bits - 1)
        err = float((t - o).abs().max())
        assert err <= step / 2 + 1e-6 * float(t.abs().max() + 1)
    assert torch.equal(out[2], ts[2])  # constant tensors come back exactly


def test_stochastic_rounding_is_unbiased_and_within_one_step():
    t = [torch.linspace(-1, 1, 35).reshape(7, 5), torch.zeros(5), torch.ones(3, 3)]
    gen = torch.Generator().manual_seed(0)
    outs = [quant.decode(quant.encode(t, SPECS, 8, "stochastic", gen), SPECS)[0]
            for _ in range(400)]
    step = 2.0 / 255
    assert max(float((o - t[0]).abs().max()) for o in outs) < step + 1e-6
    mean = torch.stack(outs).mean(0)
    assert float((mean - t[0]).abs().max()) < step / 5  # far below one step: unbiased


@pytest.mark.parametrize("bits", [8, 16])
def test_bytes_on_the_wire_are_exactly_the_formula(bits):
    ts = _tensors(1)
    enc = quant.encode(ts, SPECS, bits)
    assert enc.body.dtype == np.uint8 and list(enc.meta) == [bits] * 3
    want = sum(8 + s.numel * bits // 8 for s in SPECS)
    assert enc.body.nbytes == want == quant.body_nbytes(SPECS)(enc.meta)
    buf = pack(2, 5, enc, SPECS)
    assert buf.nbytes == header_bytes(len(SPECS)) + want
    msg = unpack(buf, SPECS, body_nbytes=quant.body_nbytes(SPECS), dtype=np.uint8)
    for a, b in zip(quant.decode(msg.encoded, SPECS), quant.decode(enc, SPECS), strict=True):
        assert torch.equal(a, b)


def test_size_rule_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits"):
        quant.body_nbytes(SPECS)(np.array([8, 4, 8]))
    with pytest.raises(ValueError):
        quant.encode(_tensors(0), SPECS, 4)


def test_codec_object_clients_round_stochastically_seeded_and_the_server_to_nearest():
    cfg = load_config(None, ["fedpaq.bits=8", "fedpaq.rounding=stochastic"])
    codec = quant.FedPAQCodec(quant.FedPAQCodec.settings_from(cfg), SPECS, cfg.seed,
                              cfg.train.rounds)
    assert codec.name == "fedpaq" and codec.wire_dtype == np.uint8
    ts = _tensors(3)
    c0a = codec.encode(ts, 2, codec.new_state(0))
    c0b = codec.encode(ts, 2, codec.new_state(0))
    c1 = codec.encode(ts, 2, codec.new_state(1))
    assert np.array_equal(c0a.body, c0b.body)  # seeded by (seed, round, client)
    assert not np.array_equal(c0a.body, c1.body)  # another client draws other bits
    assert codec.body_nbytes(c0a.meta) == c0a.body.nbytes
    server = codec.encode(ts, 2, codec.new_state(None))
    assert np.array_equal(server.body, quant.encode(ts, SPECS, 8, "nearest").body)
    for t, o in zip(ts, codec.decode(server), strict=True):
        assert o.shape == t.shape
