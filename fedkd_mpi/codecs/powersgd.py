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
from dataclasses import dataclass

import numpy as np
import torch

from fedkd_mpi.codecs.base import Codec, CodecState
from fedkd_mpi.seeding import torch_seed
from fedkd_mpi.tensors import DENSE, Payload, TensorSpec


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


@dataclass
class PowerSGDState(CodecState):
    """Per tensor: the warm-start Q and the error-feedback residual (None until set)."""

    q: list[torch.Tensor | None] | None = None
    err: list[torch.Tensor | None] | None = None


def encode(tensors: Sequence[torch.Tensor], specs: Sequence[TensorSpec], rank: int,
           state: PowerSGDState, generator: torch.Generator | None = None,
           error_feedback: bool = True) -> Payload:
    """Compress ``tensors``; reads and updates ``state`` (residuals ``err``, warm starts ``q``)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    meta = np.full(len(specs), DENSE, dtype=np.int64)
    chunks: list[np.ndarray] = []
    if state.q is None or len(state.q) != len(specs):
        state.q = [None] * len(specs)
    if state.err is None or len(state.err) != len(specs):
        state.err = [None] * len(specs)
    for i, (t, spec) in enumerate(zip(tensors, specs, strict=True)):
        m = t.detach().reshape(spec.rows, spec.cols).to(torch.float32).cpu()
        r = rank_for(spec, rank)
        if r == DENSE:
            chunks.append(m.reshape(-1).numpy())
            continue
        if error_feedback and state.err[i] is not None:
            m = m + state.err[i].reshape(spec.rows, spec.cols)
        q = state.q[i]
        if q is None or q.shape != (spec.cols, r):
            q = torch.randn(spec.cols, r, generator=generator, dtype=torch.float32)
        p = m @ q
        p = torch.linalg.qr(p, mode="reduced").Q
        q = m.T @ p
        meta[i] = r
        chunks += [p.reshape(-1).numpy(), q.reshape(-1).numpy()]
        state.q[i] = q.clone()
        if error_feedback:
            state.err[i] = (m - p @ q.T).reshape(spec.shape).clone()
    body = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return Payload(meta, body)


def decode(enc: Payload, specs: Sequence[TensorSpec],
           device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Rebuild ``P Q^T`` (or the dense matrix) per tensor, float32, original shapes."""
    body = torch.from_numpy(np.ascontiguousarray(enc.body, dtype=np.float32).reshape(-1))
    need = body_nbytes(specs)(enc.meta) // 4
    if body.numel() != need:
        raise ValueError(f"payload holds {body.numel()} floats, meta requires {need}")
    out, pos = [], 0
    for r, spec in zip(enc.meta.tolist(), specs, strict=True):
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


class PowerSGDCodec(Codec):
    """Rank ``powersgd.rank``: one warm-started power iteration, error feedback both ends."""

    name = "powersgd"
    State = PowerSGDState

    section = "powersgd"
    meta_means = "rank"

    def encode(self, tensors, rnd, state: PowerSGDState):
        s = self.settings
        gen = torch.Generator().manual_seed(torch_seed(self.seed, "powersgd"))
        return encode(tensors, self.specs, s.rank, state, gen, s.error_feedback)

    def decode(self, payload, device="cpu"):
        return decode(payload, self.specs, device)

    def body_nbytes(self, meta):
        return body_nbytes(self.specs)(meta)
