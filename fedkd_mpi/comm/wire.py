"""The wire format of one update message: a typed int64 header, then a float32 body.

Header (int64): ``MAGIC, VERSION, client_id, round, n_tensors, n_floats`` then per tensor
``K, P, Q`` (K = -1: dense). The message is one contiguous byte buffer; nothing is pickled.
The receiver checks every length against the tensor specs it expects before touching the body.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkd_mpi.codecs.svd import DENSE, Encoded, TensorSpec, payload_floats

MAGIC = 0x464B44 << 8 | 0x4D  # "FKDM"
VERSION = 1
FIXED = 6


class WireError(ValueError):
    """A received buffer does not match the expected message layout."""


def header_bytes(n_tensors: int) -> int:
    """Size in bytes of the header of a message carrying ``n_tensors`` tensors."""
    return 8 * (FIXED + 3 * n_tensors)


@dataclass
class Message:
    client_id: int
    round: int
    encoded: Encoded


def pack(client_id: int, rnd: int, enc: Encoded, specs: Sequence[TensorSpec]) -> np.ndarray:
    """One message as a uint8 array: header then float32 body."""
    n = len(specs)
    header = np.empty(FIXED + 3 * n, dtype=np.int64)
    header[:FIXED] = (MAGIC, VERSION, client_id, rnd, n, enc.body.size)
    header[FIXED:] = np.column_stack(
        [enc.ranks, [s.rows for s in specs], [s.cols for s in specs]]
    ).reshape(-1)
    out = np.empty(header.nbytes + enc.body.nbytes, dtype=np.uint8)
    out[: header.nbytes] = header.view(np.uint8)
    out[header.nbytes :] = np.ascontiguousarray(enc.body, dtype=np.float32).view(np.uint8)
    return out


def unpack(buf: np.ndarray, specs: Sequence[TensorSpec]) -> Message:
    """Parse and validate one message; raises :class:`WireError` on any mismatch."""
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    n = len(specs)
    hb = header_bytes(n)
    if buf.size < 8 * FIXED:
        raise WireError(f"message of {buf.size} bytes is shorter than the fixed header")
    fixed = buf[: 8 * FIXED].view(np.int64)
    if fixed[0] != MAGIC:
        raise WireError("message does not start with the fedkd_mpi magic number")
    if fixed[1] != VERSION:
        raise WireError(f"message format version {fixed[1]} (expected {VERSION})")
    if fixed[4] != n:
        raise WireError(f"message carries {fixed[4]} tensors, expected {n}")
    n_floats = int(fixed[5])
    if n_floats < 0 or buf.size != hb + 4 * n_floats:
        raise WireError(f"message of {buf.size} bytes, header announces {hb + 4 * n_floats}")
    table = buf[8 * FIXED : hb].view(np.int64).reshape(n, 3)
    ranks = table[:, 0].copy()
    for i, (k, p, q) in enumerate(table.tolist()):
        spec = specs[i]
        if (p, q) != (spec.rows, spec.cols):
            raise WireError(f"tensor {spec.name}: shape ({p}, {q}), expected "
                            f"({spec.rows}, {spec.cols})")
        if k != DENSE and not 1 <= k <= min(p, q):
            raise WireError(f"tensor {spec.name}: rank {k} outside [1, {min(p, q)}]")
    if payload_floats(ranks, specs) != n_floats:
        raise WireError("ranks and body length disagree")
    body = buf[hb:].view(np.float32)
    return Message(int(fixed[2]), int(fixed[3]), Encoded(ranks, body))
