"""The SVD codec: rank rule edge cases, error bound, byte formula, wire round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd_mpi.codecs.svd import (
    DENSE,
    SVDCodec,
    TensorSpec,
    choose_rank,
    decode,
    encode,
    energy_threshold,
    payload_floats,
)
from fedkd_mpi.comm.wire import WireError, header_bytes, pack, unpack
from fedkd_mpi.config import load_config
from fedkd_mpi.tensors import Payload


def _unpack(buf, specs):
    """unpack with the (default, float32) SVD codec's size rule and dtype."""
    codec = SVDCodec(load_config(None).svd, specs, 0, 1)
    return unpack(buf, specs, codec.body_nbytes, codec.wire_dtype)


def test_rank_rule_smallest_k_reaching_threshold():
    s = np.array([3.0, 2.0, 1.0, 0.5])  # energies 9, 4, 1, .25 of 14.25
    assert choose_rank(s, 0.6) == 1  # 9/14.25 = 0.63
    assert choose_rank(s, 0.64) == 2
    assert choose_rank(s, 9 / 14.25) == 1  # reaching counts (>=)
    assert choose_rank(s, 0.99) == 4 - 0  # 14/14.25 = 0.982 < 0.99 -> full rank


def test_rank_rule_never_zero_and_full_rank_at_one():
    s = np.array([5.0, 1e-9, 1e-12])
    assert choose_rank(s, 1e-6) == 1
    assert choose_rank(s, 1.0) == 3  # T = 1: full rank even when rounding says 1.0 earlier
    assert choose_rank(s, np.nextafter(1.0, 0.0)) == 1 or choose_rank(s, 0.999999) >= 1
    assert choose_rank(np.array([2.0]), 0.5) == 1


@pytest.mark.parametrize("t", [0.5, 0.9, 0.95, 0.999999])
def test_rank_rule_energy_bound_holds(t):
    s = np.sort(np.random.default_rng(0).random(40))[::-1]
    k = choose_rank(s, t)
    e = s**2 / (s**2).sum()
    assert e[:k].sum() >= t - 1e-12
    assert k == 1 or e[: k - 1].sum() < t


def test_one_by_n_and_vectors_go_dense():
    specs = [TensorSpec("w", (1, 200)), TensorSpec("b", (200,))]
    enc = encode([torch.randn(1, 200), torch.randn(200)], specs, 0.95)
    assert enc.meta.tolist() == [DENSE, DENSE]  # the official code zeroes the 1 x n weight


def test_all_zero_delta_is_sent_dense_and_exact():
    spec = TensorSpec("w", (32, 16))
    enc = encode([torch.zeros(32, 16)], [spec], 0.9)
    assert enc.meta.tolist() == [DENSE]
    assert torch.equal(decode(enc, [spec])[0], torch.zeros(32, 16))


def test_low_rank_matrix_factored_and_reconstructed_nonsquare():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(96, 3, generator=g) @ torch.randn(3, 40, generator=g)  # exact rank 3
    spec = TensorSpec("w", (96, 40))
    enc = encode([a], [spec], 0.999)
    assert enc.meta.tolist() == [3]
    assert enc.body.size == 3 * (96 + 40 + 1)
    assert torch.allclose(decode(enc, [spec])[0], a, atol=1e-4)


@pytest.mark.parametrize("t", [0.5, 0.8, 0.95])
def test_reconstruction_error_within_energy_bound(t):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(64, 48, generator=g)
    spec = TensorSpec("w", (64, 48))
    enc = encode([a], [spec], t)
    rec = decode(enc, [spec])[0]
    rel = float(((rec - a) ** 2).sum() / (a**2).sum())
    if enc.meta[0] != DENSE:
        assert rel <= 1 - t + 1e-5  # discarded energy share is at most 1 - T
    else:
        assert rel < 1e-10


def test_full_rank_needed_goes_dense():
    a = torch.eye(20)  # flat spectrum: T=0.99 needs K = 20 -> K(P+Q+1) >= PQ
    enc = encode([a], [TensorSpec("w", (20, 20))], 0.99)
    assert enc.meta.tolist() == [DENSE]


def test_conv_kernel_viewed_as_out_by_rest():
    spec = TensorSpec("conv", (8, 3, 3, 3))
    assert (spec.rows, spec.cols) == (8, 27)
    t = torch.randn(8, 3, 3, 3)
    out = decode(encode([t], [spec], None), [spec])[0]
    assert out.shape == t.shape and torch.equal(out, t)


def test_threshold_none_is_dense_and_bit_exact():
    specs = [TensorSpec("a", (10, 7)), TensorSpec("b", (7,))]
    ts = [torch.randn(10, 7), torch.randn(7)]
    enc = encode(ts, specs, None)
    assert enc.meta.tolist() == [DENSE, DENSE]
    assert all(torch.equal(x, y) for x, y in zip(decode(enc, specs), ts, strict=True))


def test_schedule_code_and_endpoints():
    assert energy_threshold(0.9, 1.0, 0, 5, "code") == pytest.approx(0.92)
    assert energy_threshold(0.9, 1.0, 4, 5, "code") == pytest.approx(1.0)
    assert energy_threshold(0.9, 1.0, 0, 5, "endpoints") == pytest.approx(0.9)
    assert energy_threshold(0.9, 1.0, 4, 5, "endpoints") == pytest.approx(1.0)


def test_byte_count_equals_wire_buffer():
    g = torch.Generator().manual_seed(3)
    specs = [TensorSpec("q", (64, 64)), TensorSpec("b", (64,)), TensorSpec("f", (128, 64)),
             TensorSpec("c", (2, 64))]
    ts = [torch.randn(64, 4, generator=g) @ torch.randn(4, 64, generator=g), torch.randn(64),
          torch.randn(128, 64, generator=g), torch.randn(2, 64)]
    enc = encode(ts, specs, 0.95)
    msg = pack(5, 2, enc, specs)
    floats = sum(k * (s.rows + s.cols + 1) if k != DENSE else s.numel
                 for k, s in zip(enc.meta.tolist(), specs, strict=True))
    assert msg.nbytes == header_bytes(len(specs)) + 4 * floats
    assert floats == payload_floats(enc.meta, specs)
    back = _unpack(msg, specs)
    assert (back.client_id, back.round) == (5, 2)
    assert np.array_equal(back.encoded.meta, enc.meta)
    assert np.array_equal(back.encoded.body, enc.body)


def test_wire_rejects_malformed():
    specs = [TensorSpec("w", (8, 8))]
    msg = pack(0, 0, encode([torch.randn(8, 8)], specs, None), specs)
    with pytest.raises(WireError):
        _unpack(msg[:-4], specs)  # truncated
    with pytest.raises(WireError):
        _unpack(np.concatenate([msg, np.zeros(4, np.uint8)]), specs)  # oversized
    bad = msg.copy()
    bad[0] ^= 0xFF
    with pytest.raises(WireError):
        _unpack(bad, specs)  # magic
    with pytest.raises(WireError):
        _unpack(msg, [TensorSpec("w", (8, 4))])  # shape mismatch
    with pytest.raises(WireError):
        _unpack(np.zeros(3, np.uint8), specs)


def test_decode_rejects_inconsistent_body():
    spec = TensorSpec("w", (8, 8))
    with pytest.raises(ValueError):
        decode(Payload(np.array([2]), np.zeros(5, np.float32)), [spec])
