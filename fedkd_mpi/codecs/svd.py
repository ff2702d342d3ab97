"""Truncated-SVD codec for update tensors (FEDKD.md §5): pure encode/decode + a small state.

Each tensor is viewed as a P x Q matrix (vectors as (n, 1), conv kernels as (O, I*kh*kw)).
Its rank K is the smallest k in [1, r] whose singular-value energy share reaches T (energies in
float64); K = r when nothing smaller qualifies. A matrix goes **dense** when the update is all
zero, when it is a vector, or when K(P+Q+1) >= PQ. On the wire a factored matrix is
``U_K (P*K) | sigma_K (K) | Vt_K (K*Q)`` in float32, reconstructed as ``(U_K * sigma_K) @ Vt_K``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedkd_mpi.codecs.linalg import Factorization, factorize

DENSE = -1


@dataclass(frozen=True)
class TensorSpec:
    """Name and shape of one communicated tensor, and its 2-D view for the SVD."""

    name: str
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return int(self.shape[0]) if len(self.shape) >= 2 else int(math.prod(self.shape))

    @property
    def cols(self) -> int:
        return int(math.prod(self.shape[1:])) if len(self.shape) >= 2 else 1

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def floats(self, rank: int) -> int:
        """float32 values this tensor occupies on the wire at ``rank`` (DENSE = -1)."""
        return self.numel if rank == DENSE else rank * (self.rows + self.cols + 1)


def choose_rank(sigma: np.ndarray, threshold: float) -> int:
    """Smallest K in [1, r] with sum_{j<=K} s_j^2 / sum s_j^2 >= T; r if none smaller (§5.2)."""
    energy = np.asarray(sigma, dtype=np.float64) ** 2
    total = energy.sum()
    r = len(energy)
    if r == 0 or total <= 0.0 or threshold >= 1.0:
        return r
    share = np.cumsum(energy) / total
    k = int(np.searchsorted(share[: r - 1], threshold, side="left")) + 1
    return min(k, r)


def energy_threshold(t_start: float, t_end: float, rnd: int, rounds: int, schedule: str) -> float:
    """Eq. 9 with t = (r+1)/R ('code') or t = r/(R-1) ('endpoints'); ``rnd`` is 0-based.

    ``fixed`` (ablation): T = t_end in every round.
    """
    if schedule == "fixed":
        return t_end
    if schedule == "code":
        t = (rnd + 1) / rounds
    else:
        t = rnd / (rounds - 1) if rounds > 1 else 1.0
    return t_start + (t_end - t_start) * t


@dataclass
class Encoded:
    """One encoded tensor list: per-tensor rank (DENSE = -1) and the flat float32 body."""

    ranks: np.ndarray  # int64[L]
    body: np.ndarray  # float32[n]


def encode(
    tensors: Sequence[torch.Tensor | None], specs: Sequence[TensorSpec], threshold: float | None,
    *, method: str = "auto", factors: Mapping[int, Factorization] | None = None,
    max_rank: int | None = None, dtype: np.dtype | type = np.float32,
) -> Encoded:
    """Encode tensors; ``threshold=None`` sends everything dense (FedAvg).

    ``method``: the factorisation path (codecs/linalg.py: auto | full | gram | randomized);
    ``factors``: already-known factorisations by tensor index (the server's factored
    average; the tensor may then be None), used instead of factorising.
    ``max_rank``: cap on K per matrix; ``dtype``: body dtype on the wire (float32 | float16).
    """
    ranks = np.full(len(specs), DENSE, dtype=np.int64)
    chunks: list[np.ndarray] = []
    pre = dict(factors or {})
    mats = [None if i in pre else t.detach().reshape(spec.rows, spec.cols).to(torch.float32)
            for i, (t, spec) in enumerate(zip(tensors, specs, strict=True))]
    todo = [i for i, spec in enumerate(specs) if i not in pre and threshold is not None
            and spec.cols > 1 and spec.rows > 1]
    pre.update(zip(todo, factorize([mats[i] for i in todo], threshold, method), strict=True))
    for i, spec in enumerate(specs):
        f = pre.get(i)
        if f is not None and threshold is not None:
            u, s, vt = f.u, f.s, f.vt
            if f.total > 0.0:
                k = f.rank if max_rank is None else min(f.rank, max_rank)
                if spec.floats(k) < spec.numel:
                    ranks[i] = k
                    chunks += [u[:, :k].reshape(-1).cpu().numpy(), s[:k].cpu().numpy(),
                               vt[:k].reshape(-1).cpu().numpy()]
                    continue
        mat = mats[i] if mats[i] is not None else f.dense()
        chunks.append(mat.reshape(-1).cpu().numpy())
    body = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    body = body.astype(dtype, copy=False)
    return Encoded(ranks, body)


def checked_body_bytes(enc: Encoded, size_rule) -> np.ndarray:
    """``enc.body`` as flat uint8, after checking its length against ``size_rule(meta)``."""
    body = np.ascontiguousarray(enc.body).view(np.uint8).reshape(-1)
    need = size_rule(enc.ranks)
    if body.size != need:
        raise ValueError(f"payload holds {body.size} bytes, meta requires {need}")
    return body


def payload_floats(ranks: np.ndarray, specs: Sequence[TensorSpec]) -> int:
    """float32 values a body must hold for these ranks (the byte formula of §5.6, / 4)."""
    return sum(spec.floats(int(k)) for k, spec in zip(ranks, specs, strict=True))


def decode(
    enc: Encoded, specs: Sequence[TensorSpec], device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Rebuild the tensors (float32, original shapes) from ranks and body."""
    need = payload_floats(enc.ranks, specs)
    if enc.body.size != need:
        raise ValueError(f"payload holds {enc.body.size} floats, ranks require {need}")
    body = torch.from_numpy(np.ascontiguousarray(enc.body).astype(np.float32, copy=False))
    body = body.to(device)
    out: list[torch.Tensor] = []
    pos = 0
    for k, spec in zip(enc.ranks.tolist(), specs, strict=True):
        p, q = spec.rows, spec.cols
        if k == DENSE:
            mat = body[pos : pos + p * q].view(p, q)
            pos += p * q
        else:
            u = body[pos : pos + p * k].view(p, k)
            s = body[pos + p * k : pos + p * k + k]
            vt = body[pos + p * k + k : pos + p * k + k + k * q].view(k, q)
            pos += k * (p + q + 1)
            mat = (u * s) @ vt
        out.append(mat.reshape(spec.shape).clone())
    return out


@dataclass(frozen=True)
class SVDCodecState:
    """The codec's settings across rounds: the energy schedule (Eq. 9)."""

    t_start: float
    t_end: float
    rounds: int
    schedule: str = "code"

    def threshold(self, rnd: int) -> float:
        return energy_threshold(self.t_start, self.t_end, rnd, self.rounds, self.schedule)
