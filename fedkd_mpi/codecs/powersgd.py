"""PowerSGD-style low-rank compression (Vogels et al., 2019): pure encode/decode + state.

Each matrix update M (its P x Q view, plus the error-feedback residual) is approximated at rank
``r`` by one step of subspace (power) iteration warm-started from the previous round's Q:
``P = orth(M Q_prev)``, ``Q = M^T P``, ``M ~ P Q^T``. The residual ``M - P Q^T`` and the new Q
are the caller's state (per client, or on the server for the re-encoded average). The first Q
is drawn from a seeded standard normal (caller-supplied ``torch.Generator``).

Vectors, and matrices where ``r (P + Q) >= P Q``, go dense (meta ``-1``), with no residual.
Wire: body float32, per tensor ``P (P*r) | Q (Q*r)`` row-major or ``dense (P*Q)``; the
header's ``meta`` is ``r`` or ``-1``. One tensor costs ``4 r (P + Q)`` or ``4 P Q`` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedkd_mpi.codecs.svd import DENSE, Encoded, TensorSpec


def rank_for(spec: TensorSpec, rank: int) -> int:
    """The rank a matrix is sent at (``DENSE`` if low rank would not save bytes)."""
    r = min(rank, spec.rows, spec.cols)
    if spec.rows == 1 or spec.cols == 1 or r * (spec.rows + spec.cols) >= spec.numel:
        return DENSE
    return r


def tensor_floats(spec: TensorSpec, r: int) -> int:
    return spec.numel if r == DENSE else r * (spec.rows + spec.cols)


def body_nbytes(specs: Sequence[TensorSpec]):
    """The wire's size rule for this codec: ``fn(meta) -> bytes`` (ValueError on bad meta)."""

    def size(meta: np.ndarray) -> int:
        total = 0
        for r, spec in zip(np.asarray(meta).tolist(), specs, strict=True):
            if r != DENSE and not 1 <= r <= min(spec.rows, spec.cols):
                raise ValueError(f"tensor {spec.name}: rank {r} outside "
                                 f"[1, {min(spec.rows, spec.cols)}] and not -1 (dense)")
            total += 4 * tensor_floats(spec, r)
        return total

    return size


def encode(tensors: Sequence[torch.Tensor], specs: Sequence[TensorSpec], rank: int,
           state: dict[str, torch.Tensor], generator: torch.Generator | None = None,
           error_feedback: bool = True) -> Encoded:
    """Compress ``tensors``; reads and updates ``state`` (``err/i`` residuals, ``q/i``)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    meta = np.full(len(specs), DENSE, dtype=np.int64)
    chunks: list[np.ndarray] = []
    for i, (t, spec) in enumerate(zip(tensors, specs, strict=True)):
        m = t.detach().reshape(spec.rows, spec.cols).to(torch.float32).cpu()
        r = rank_for(spec, rank)
        if r == DENSE:
            chunks.append(m.reshape(-1).numpy())
            continue
        if error_feedback and f"err/{i}" in state:
            m = m + state[f"err/{i}"].reshape(spec.rows, spec.cols)
        q = state.get(f"q/{i}")
        if q is None or q.shape != (spec.cols, r):
            q = torch.randn(spec.cols, r, generator=generator, dtype=torch.float32)
        p = m @ q
        p = torch.linalg.qr(p, mode="reduced").Q
        q = m.T @ p
        meta[i] = r
        chunks += [p.reshape(-1).numpy(), q.reshape(-1).numpy()]
        state[f"q/{i}"] = q.clone()
        if error_feedback:
            state[f"err/{i}"] = (m - p @ q.T).reshape(spec.shape).clone()
    body = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return Encoded(meta, body)


def decode(enc: Encoded, specs: Sequence[TensorSpec],
           device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Rebuild ``P Q^T`` (or the dense matrix) per tensor, float32, original shapes."""
    body = torch.from_numpy(np.ascontiguousarray(enc.body, dtype=np.float32).reshape(-1))
    need = body_nbytes(specs)(enc.ranks) // 4
    if body.numel() != need:
        raise ValueError(f"payload holds {body.numel()} floats, meta requires {need}")
    out, pos = [], 0
    for r, spec in zip(enc.ranks.tolist(), specs, strict=True):
        a, b = spec.rows, spec.cols
        if r == DENSE:
            mat = body[pos : pos + a * b].view(a, b)
            pos += a * b
        else:
            p = body[pos : pos + a * r].view(a, r)
            q = body[pos + a * r : pos + r * (a + b)].view(b, r)
            pos += r * (a + b)
            mat = p @ q.T
        out.append(mat.reshape(spec.shape).clone().to(device))
    return out
