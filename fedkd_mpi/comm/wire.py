"""The wire format of one update message (v2): a typed int64 header, then a raw byte body.

Header (int64, little-endian as every supported MPI host)::

    MAGIC, VERSION, client_id, round, n_tensors, body_nbytes, body_dtype_code, flags
    then per tensor: meta, P, Q

``meta`` is codec-specific (SVD: K, ``-1`` = dense); the wire knows no codec. The body is
``body_nbytes`` raw bytes of one numpy dtype named by ``body_dtype_code``
(:data:`DTYPE_CODES`). ``flags`` bit 0 = :data:`SKIP`: a header-only message
(``n_tensors = 0``, no body) meaning "this client has no update this round". The message is
one contiguous byte buffer; nothing is pickled.

:func:`unpack` checks magic, version, flags, dtype code, tensor count, shapes and every length
against what the receiver expects *before* it touches the body; the codec-specific check of
the body size is the codec's rule (``body_nbytes=fn(meta) -> int``). Any mismatch
raises :class:`WireError` with a one-line message, never another exception.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedkd_mpi.tensors import Payload, TensorSpec

MAGIC = 0x464B44 << 8 | 0x4D  # "FKDM"
VERSION = 2
FIXED = 8  # int64 words before the per-tensor table
SKIP = 1  # flags bit 0
KNOWN_FLAGS = SKIP

#: body dtype code <-> numpy dtype (codes are part of the format: never renumber)
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.float16), 3: np.dtype(np.float64),
    4: np.dtype(np.uint8), 5: np.dtype(np.int8), 6: np.dtype(np.int16),
    7: np.dtype(np.int32), 8: np.dtype(np.int64),
}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}

#: ``fn(meta) -> expected body bytes``; raises ValueError when ``meta`` is invalid
BodySize = Callable[[np.ndarray], int]


class WireError(ValueError):
    """A received buffer does not match the expected message layout."""


def header_bytes(n_tensors: int) -> int:
    """Size in bytes of the header of a message carrying ``n_tensors`` tensors."""
    return 8 * (FIXED + 3 * n_tensors)


SKIP_BYTES = header_bytes(0)  # size of a SKIP message


def dtype_code(dtype: np.dtype | type) -> int:
    """The wire code of a body dtype (:class:`WireError` if it has none)."""
    dt = np.dtype(dtype).newbyteorder("=")
    if dt not in _CODE_OF:
        raise WireError(f"body dtype {dt} has no wire code (known: "
                        f"{', '.join(str(d) for d in _CODE_OF)})")
    return _CODE_OF[dt]


@dataclass
class Message:
    client_id: int
    round: int
    encoded: Payload | None  # None for a SKIP message
    flags: int = 0

    @property
    def skip(self) -> bool:
        return bool(self.flags & SKIP)


def pack(client_id: int, rnd: int, enc: Payload, specs: Sequence[TensorSpec]) -> np.ndarray:
    """One message as a uint8 array: header then the body's raw bytes (any coded dtype)."""
    n = len(specs)
    body = np.ascontiguousarray(enc.body).reshape(-1)
    meta = np.asarray(enc.meta, dtype=np.int64).reshape(-1)
    if meta.size != n:
        raise WireError(f"{meta.size} meta values for {n} tensors")
    header = np.empty(FIXED + 3 * n, dtype="<i8")
    header[:FIXED] = (MAGIC, VERSION, client_id, rnd, n, body.nbytes, dtype_code(body.dtype), 0)
    header[FIXED:] = np.column_stack(
        [meta, [s.rows for s in specs], [s.cols for s in specs]]
    ).reshape(-1)
    out = np.empty(header.nbytes + body.nbytes, dtype=np.uint8)
    out[: header.nbytes] = header.view(np.uint8)
    out[header.nbytes :] = body.view(np.uint8)
    return out


def pack_skip(client_id: int, rnd: int) -> np.ndarray:
    """A header-only SKIP message: this client has no update in round ``rnd``."""
    header = np.array([MAGIC, VERSION, client_id, rnd, 0, 0, dtype_code(np.float32), SKIP],
                      dtype="<i8")
    return header.view(np.uint8).copy()


def unpack(buf: np.ndarray, specs: Sequence[TensorSpec], body_nbytes: BodySize,
           dtype: np.dtype | type) -> Message:
    """Parse and validate one message; raises :class:`WireError` on any mismatch.

    ``body_nbytes(meta)`` gives the body size the tensor metadata requires (the codec's rule;
    it raises ``ValueError`` for invalid metadata); ``dtype`` is the body dtype the codec
    expects. A SKIP message is accepted whatever the specs (``encoded=None``).
    """
    try:
        buf = np.asarray(buf)
        if buf.dtype != np.uint8:
            raise WireError(f"message buffer has dtype {buf.dtype}, expected uint8")
        buf = buf.reshape(-1)
        size = int(buf.size)
        if size < 8 * FIXED:
            raise WireError(f"message of {size} bytes is shorter than the {8 * FIXED}-byte "
                            "fixed header")
        # a copy: aligned whatever the offset of this message inside a gathered buffer
        fixed = [int(x) for x in np.frombuffer(buf[: 8 * FIXED].tobytes(), dtype="<i8")]
        magic, version, cid, rnd, n_t, nbytes, code, flags = fixed
        if magic != MAGIC:
            raise WireError("message does not start with the fedkd_mpi magic number")
        if version != VERSION:
            raise WireError(f"message format version {version} (expected {VERSION})")
        if flags & ~KNOWN_FLAGS:
            raise WireError(f"message has unknown flag bits {flags & ~KNOWN_FLAGS:#x}")
        if code not in DTYPE_CODES:
            raise WireError(f"message body dtype code {code} is unknown "
                            f"(known: {sorted(DTYPE_CODES)})")
        if flags & SKIP:
            if n_t != 0 or nbytes != 0 or size != SKIP_BYTES:
                raise WireError(f"SKIP message with {n_t} tensors, {nbytes} body bytes, "
                                f"{size} bytes in all (expected 0, 0, {SKIP_BYTES})")
            return Message(cid, rnd, None, flags)
        n = len(specs)
        if n_t != n:
            raise WireError(f"message carries {n_t} tensors, expected {n}")
        hb = header_bytes(n)
        if nbytes < 0 or size != hb + nbytes:
            raise WireError(f"message of {size} bytes, header announces {hb} + {nbytes}")
        body_dt = DTYPE_CODES[code]
        if body_dt != np.dtype(dtype):
            raise WireError(f"message body is {body_dt}, expected {np.dtype(dtype)}")
        if nbytes % body_dt.itemsize:
            raise WireError(f"body of {nbytes} bytes is not a whole number of {body_dt}")
        table = np.frombuffer(buf[8 * FIXED : hb].tobytes(), dtype="<i8").reshape(n, 3)
        for spec, (p, q) in zip(specs, table[:, 1:].tolist(), strict=True):
            if (p, q) != (spec.rows, spec.cols):
                raise WireError(f"tensor {spec.name}: shape ({p}, {q}), expected "
                                f"({spec.rows}, {spec.cols})")
        meta = table[:, 0].astype(np.int64)
        try:
            need = int(body_nbytes(meta))
        except WireError:
            raise
        except (ValueError, OverflowError) as exc:
            raise WireError(f"invalid tensor metadata: {exc}") from None
        if need != nbytes:
            raise WireError(f"tensor metadata requires a {need}-byte body, message has {nbytes}")
        body = buf[hb:].view(body_dt)
        if not body.flags.aligned:
            body = body.copy()
        return Message(cid, rnd, Payload(meta, body), flags)
    except WireError:
        raise
    except Exception as exc:  # a malformed buffer must never surface as another exception
        raise WireError(f"malformed message: {type(exc).__name__}: {exc}") from None
