"""Top-k codec: exact support, error feedback carried across rounds, exact byte count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkd_mpi.codecs import topk
from fedkd_mpi.comm.wire import header_bytes, pack, unpack
from fedkd_mpi.config import load_config
from fedkd_mpi.tensors import TensorSpec

SPECS = [TensorSpec("w", (8, 6)), TensorSpec("b", (6,))]


@given(seed=st.integers(0, 10_000), ratio=st.sampled_from([0.05, 0.1, 0.3, 1.0]))
@settings(max_examples=30, deadline=None)
def test_support_is_exactly_the_k_largest(seed, ratio):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(s.shape, generator=g) for s in SPECS]
    enc, res = topk.encode(ts, SPECS, ratio)
    out = topk.decode(enc, SPECS)
    for t, o, r, s in zip(ts, out, res, SPECS, strict=True):
        k = topk.k_of(s, ratio)
        nz = o.reshape(-1) != 0
        assert int(nz.sum()) == k
        kth = t.abs().reshape(-1).sort(descending=True).values[k - 1]
        assert bool((t.abs().reshape(-1)[nz] >= kth).all())  # kept = the k largest
        assert torch.equal(o.reshape(-1)[nz], t.reshape(-1)[nz])  # values exact
        assert torch.equal(o + r, t)  # residual = exactly what was left out


def test_error_feedback_carries_the_residual_into_the_next_round():
    s = [TensorSpec("v", (4, 1))]
    d = [torch.tensor([[1.0], [0.6], [0.5], [0.1]])]
    enc1, res1 = topk.encode(d, s, 0.25)
    assert torch.equal(topk.decode(enc1, s)[0].reshape(-1), torch.tensor([1.0, 0, 0, 0]))
    # round 2, same delta: 0.6 + 0.6 = 1.2 now beats 1.0 because of the carried residual
    enc2, res2 = topk.encode(d, s, 0.25, res1)
    assert torch.equal(topk.decode(enc2, s)[0].reshape(-1), torch.tensor([0, 1.2, 0, 0]))
    assert torch.allclose(res2[0].reshape(-1), torch.tensor([1.0, 0.0, 1.0, 0.2]))
    # without feedback round 2 would send the same entry again
    enc3, _ = topk.encode(d, s, 0.25, None)
    assert topk.decode(enc3, s)[0].reshape(-1)[0] == 1.0


def test_bytes_on_the_wire_are_exactly_the_formula():
    ts = [torch.randn(s.shape) for s in SPECS]
    enc, _ = topk.encode(ts, SPECS, 0.1)
    assert list(enc.meta) == [5, 1] and enc.body.dtype == np.uint8
    assert enc.body.nbytes == 8 * (5 + 1) == topk.body_nbytes(SPECS)(enc.meta)
    buf = pack(0, 0, enc, SPECS)
    assert buf.nbytes == header_bytes(2) + 48
    msg = unpack(buf, SPECS, body_nbytes=topk.body_nbytes(SPECS), dtype=np.uint8)
    assert torch.equal(topk.decode(msg.encoded, SPECS)[0], topk.decode(enc, SPECS)[0])


def test_bad_meta_and_indices_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        topk.body_nbytes(SPECS)(np.array([49, 1]))
    enc, _ = topk.encode([torch.ones(8, 6), torch.ones(6)], SPECS, 0.1)
    body = enc.body.copy()
    body[20:24] = np.array([999], "<i4").view(np.uint8)  # first index of tensor 0 (k=5)
    with pytest.raises(ValueError, match="index"):
        topk.decode(type(enc)(enc.meta, body), SPECS)


@pytest.mark.parametrize("feedback", [True, False])
def test_codec_object_keeps_the_residual_in_its_state(feedback):
    s = [TensorSpec("v", (4, 1))]
    cfg = load_config(None, ["topk.ratio=0.25", f"topk.error_feedback={str(feedback).lower()}"])
    codec = topk.TopKCodec(topk.TopKCodec.settings_from(cfg), s, cfg.seed, cfg.train.rounds)
    st = codec.new_state(0)
    assert isinstance(st, topk.TopKState) and st.residual is None
    d = [torch.tensor([[1.0], [0.6], [0.5], [0.1]])]
    enc1 = codec.encode(d, 0, st)
    assert enc1.body.dtype == codec.wire_dtype == np.uint8
    assert codec.body_nbytes(enc1.meta) == enc1.body.nbytes == 8
    assert torch.equal(codec.decode(enc1)[0].reshape(-1), torch.tensor([1.0, 0, 0, 0]))
    enc2 = codec.encode(d, 1, st)
    if feedback:  # same as the pure function with the carried residual
        assert torch.allclose(st.residual[0].reshape(-1), torch.tensor([1.0, 0.0, 1.0, 0.2]))
        assert torch.equal(codec.decode(enc2)[0].reshape(-1), torch.tensor([0, 1.2, 0, 0]))
    else:
        assert st.residual is None
        assert torch.equal(codec.decode(enc2)[0].reshape(-1), torch.tensor([1.0, 0, 0, 0]))
