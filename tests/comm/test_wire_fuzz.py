"""Wire format v2: round trips, and a fuzzed decoder that only ever raises WireError.

Every malformed buffer (random, truncated, oversized, any header word or byte changed) must be
rejected with :class:`WireError` or, when the change leaves a well-formed message (a body byte,
the client id), parse into a message whose body exactly fills the buffer and decodes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkd_mpi.codecs.svd import DENSE, SVDCodec, TensorSpec, decode, encode
from fedkd_mpi.comm.wire import (
    DTYPE_CODES,
    FIXED,
    MAGIC,
    SKIP,
    SKIP_BYTES,
    VERSION,
    WireError,
    dtype_code,
    header_bytes,
    pack,
    pack_skip,
    unpack,
)
from fedkd_mpi.config import load_config
from fedkd_mpi.tensors import Payload

SPECS = [TensorSpec("a", (12, 8)), TensorSpec("b", (8,)), TensorSpec("c", (3, 5))]
SVD_SETTINGS = load_config(None).svd  # float32 factors: the paper's codec
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _message(threshold: float | None = 0.9) -> np.ndarray:
    g = torch.Generator().manual_seed(7)
    ts = [torch.randn(12, 2, generator=g) @ torch.randn(2, 8, generator=g),
          torch.randn(8, generator=g), torch.randn(3, 5, generator=g)]
    return pack(4, 2, encode(ts, SPECS, threshold), SPECS)


MSG = _message()
DENSE_MSG = _message(None)


def svd_rule(specs=SPECS):
    """The SVD codec's size rule (the paper's: float32, K in [1, min(P, Q)] or -1 dense)."""
    return SVDCodec(SVD_SETTINGS, specs, 0, 1).body_nbytes


def unpack_svd(buf: np.ndarray, specs=SPECS):
    """unpack with the SVD codec's rule and float32 bodies (what the old default was)."""
    return unpack(buf, specs, svd_rule(specs), np.float32)


def announced_dtype(buf: np.ndarray) -> np.dtype:
    """The body dtype the header announces (float32 when unreadable or unknown): a custom
    rule then accepts any coded body dtype."""
    buf = np.asarray(buf).reshape(-1)
    if buf.dtype != np.uint8 or buf.size < 8 * FIXED:
        return np.dtype(np.float32)
    code = int(np.frombuffer(buf[48:56].tobytes(), "<i8")[0])
    return DTYPE_CODES.get(code, np.dtype(np.float32))


def _check_accepted(buf: np.ndarray, specs=SPECS, body_nbytes=None) -> None:
    """Parse (the SVD rule and float32, or a custom rule and the announced dtype); on
    success the message must be self-consistent and (SVD) decodable."""
    try:
        if body_nbytes is None:
            msg = unpack_svd(buf, specs)
        else:
            msg = unpack(buf, specs, body_nbytes, announced_dtype(buf))
    except WireError as exc:
        assert "\n" not in str(exc)
        return
    if msg.skip:
        assert msg.encoded is None and buf.size == SKIP_BYTES
        return
    assert msg.encoded.body.nbytes == buf.size - header_bytes(len(specs))
    if body_nbytes is None:
        out = decode(msg.encoded, specs)
        assert [tuple(t.shape) for t in out] == [s.shape for s in specs]


def test_round_trip_and_header_layout():
    back = unpack_svd(MSG, SPECS)
    assert (back.client_id, back.round, back.skip) == (4, 2, False)
    assert back.encoded.meta.tolist()[1:] == [DENSE, DENSE] and back.encoded.meta[0] >= 1
    words = MSG[: 8 * FIXED].view("<i8")
    assert words.tolist()[:2] == [MAGIC, VERSION]
    assert words[5] == MSG.size - header_bytes(3) and words[6] == dtype_code(np.float32)
    assert words[7] == 0


@pytest.mark.parametrize("dt", [np.float16, np.uint8, np.int8, np.int32, np.float64])
def test_other_body_dtypes_with_codec_size_rule(dt):
    """A codec with its own body (e.g. 8-bit values) passes its own size rule and dtype."""
    numel = [s.numel for s in SPECS]
    body = np.arange(sum(numel), dtype=dt)
    enc = Payload(np.array([8, 8, 8]), body)  # meta = bits per value, say

    def size(meta: np.ndarray) -> int:
        if (meta != 8).any():
            raise ValueError(f"bits {meta.tolist()} (only 8 supported)")
        return sum(numel) * np.dtype(dt).itemsize

    buf = pack(1, 0, enc, SPECS)
    back = unpack(buf, SPECS, body_nbytes=size, dtype=dt)
    assert back.encoded.body.dtype == np.dtype(dt) and np.array_equal(back.encoded.body, body)
    with pytest.raises(WireError, match="expected float32"):
        unpack(buf, SPECS, svd_rule(), np.float32)  # the SVD rule wants float32
    bad = pack(1, 0, Payload(np.array([8, 4, 8]), body), SPECS)
    with pytest.raises(WireError, match="only 8 supported"):
        unpack(bad, SPECS, body_nbytes=size, dtype=dt)
    other = np.float32 if dt != np.float32 else np.float16
    with pytest.raises(WireError, match="expected"):
        unpack(buf, SPECS, body_nbytes=size, dtype=other)


def test_odd_offsets_inside_a_gathered_buffer_are_aligned_copies():
    """uint8 bodies make later messages start at odd offsets; views must still be usable."""
    odd = pack(0, 0, Payload(np.zeros(3, np.int64), np.zeros(3, np.uint8)),
               [TensorSpec("x", (3,))] * 3)
    cat = np.concatenate([odd[:-2], MSG])  # MSG now starts at an offset that is 1 mod 8
    part = cat[odd.size - 2 :]
    back = unpack_svd(part, SPECS)
    assert back.encoded.body.flags.aligned
    assert np.array_equal(back.encoded.body, unpack_svd(MSG, SPECS).encoded.body)


def test_skip_message():
    buf = pack_skip(3, 5)
    assert buf.size == SKIP_BYTES == 64
    msg = unpack_svd(buf, SPECS)
    assert msg.skip and msg.encoded is None and (msg.client_id, msg.round) == (3, 5)
    assert msg.flags == SKIP
    with pytest.raises(WireError, match="SKIP"):
        unpack_svd(np.concatenate([buf, np.zeros(8, np.uint8)]), SPECS)


@pytest.mark.parametrize("word, value, needle", [
    (0, 0, "magic"), (1, 1, "version 1"), (1, 3, "version 3"), (4, 2, "2 tensors"),
    (5, 12, "header announces"), (5, -4, "header announces"), (6, 99, "dtype code 99"),
    (6, dtype_code(np.float16), "expected float32"), (7, 4, "unknown flag"),
    (7, SKIP, "SKIP message"),
])
def test_each_header_word_is_checked(word, value, needle):
    bad = MSG.copy()
    bad[8 * word : 8 * word + 8] = np.array([value], "<i8").view(np.uint8)
    with pytest.raises(WireError, match=needle):
        unpack_svd(bad, SPECS)


def test_wrong_shape_and_rank_in_table():
    for col, value, needle in ((1, 13, "shape"), (2, 9, "shape"), (0, 0, "rank 0"),
                               (0, 9, "rank 9"), (0, -2, "rank -2"), (0, 2**62, "rank")):
        bad = MSG.copy()
        off = 8 * (FIXED + col)
        bad[off : off + 8] = np.array([value], "<i8").view(np.uint8)
        with pytest.raises(WireError, match=needle):
            unpack_svd(bad, SPECS)
    with pytest.raises(WireError, match="shape"):
        specs = [TensorSpec("a", (8, 12)), *SPECS[1:]]
        unpack_svd(MSG, specs)
    with pytest.raises(WireError, match="tensors"):
        unpack_svd(MSG, SPECS[:2])


def test_rank_consistent_with_body_but_not_with_shape():
    """A valid rank whose factor size (4 * 21 floats) disagrees with the dense body (96)."""
    bad = DENSE_MSG.copy()
    off = 8 * FIXED
    bad[off : off + 8] = np.array([4], "<i8").view(np.uint8)
    with pytest.raises(WireError, match="requires"):
        unpack_svd(bad, SPECS)


def test_non_uint8_or_odd_inputs():
    with pytest.raises(WireError):
        unpack_svd(MSG.view(np.int64) if MSG.size % 8 == 0 else MSG.astype(np.int16), SPECS)
    with pytest.raises(WireError):
        unpack_svd(np.zeros(0, np.uint8), SPECS)
    with pytest.raises(WireError):
        unpack_svd(np.array([[1, 2]], dtype=object), SPECS)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_buffers(data):
    _check_accepted(np.frombuffer(data, dtype=np.uint8))


@FUZZ
@given(st.binary(min_size=8 * FIXED, max_size=400))
def test_fuzz_random_body_after_valid_magic_and_version(data):
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    buf[:16] = np.array([MAGIC, VERSION], "<i8").view(np.uint8)
    _check_accepted(buf)
    _check_accepted(buf, body_nbytes=lambda meta: int(meta.sum()))


@FUZZ
@given(st.sampled_from([MSG, DENSE_MSG, pack_skip(1, 1)]), st.integers(0, 10_000))
def test_fuzz_truncated(msg, cut):
    _check_accepted(msg[: cut % msg.size])
    with pytest.raises(WireError):
        unpack_svd(msg[: cut % msg.size], SPECS)


@FUZZ
@given(st.sampled_from([MSG, DENSE_MSG]), st.binary(min_size=1, max_size=64))
def test_fuzz_oversized(msg, extra):
    buf = np.concatenate([msg, np.frombuffer(extra, np.uint8)])
    with pytest.raises(WireError):
        unpack_svd(buf, SPECS)


@FUZZ
@given(st.sampled_from([MSG, DENSE_MSG, pack_skip(1, 1)]), st.integers(0, 10**6),
       st.integers(-(2**63), 2**63 - 1))
def test_fuzz_any_header_word(msg, which, value):
    n_words = min(msg.size, header_bytes(len(SPECS))) // 8
    w = which % n_words
    buf = msg.copy()
    buf[8 * w : 8 * w + 8] = np.array([value], "<i8").view(np.uint8)
    _check_accepted(buf)
    _check_accepted(buf, body_nbytes=lambda meta: int(meta.sum()))


@FUZZ
@given(st.sampled_from([MSG, DENSE_MSG]),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                max_size=8))
def test_fuzz_byte_flips(msg, flips):
    buf = msg.copy()
    for pos, val in flips:
        buf[pos % buf.size] = val
    _check_accepted(buf)


@FUZZ
@given(st.integers(0, len(DTYPE_CODES) + 3), st.integers(0, 64))
def test_fuzz_custom_rule_raising_anything(code, n):
    """A codec rule that fails in any way still surfaces as WireError."""
    body = np.zeros(n, np.uint8)
    buf = pack(0, 0, Payload(np.array([n, n, n]), body), SPECS)
    buf[8 * 6 : 8 * 7] = np.array([code], "<i8").view(np.uint8)

    def rule(meta: np.ndarray) -> int:
        return [n][int(meta[0]) - n + code]  # IndexError for most codes

    _check_accepted(buf, body_nbytes=rule)
