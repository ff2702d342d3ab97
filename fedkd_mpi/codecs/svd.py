"""Truncated-SVD codec for update tensors (FEDKD.md §5): pure encode/decode + a small state.

Each tensor is viewed as a P x Q matrix (vectors as (n, 1), conv kernels as (O, I*kh*kw)).
Its rank K is the smallest k in [1, r] whose singular-value energy share reaches T (energies in
float64); K = r when nothing smaller qualifies. A matrix goes **dense** when the update is all
zero, when it is a vector, or when K(P+Q+1) >= PQ. On the wire a factored matrix is
``U_K (P*K) | sigma_K (K) | Vt_K (K*Q)`` in float32, reconstructed as ``(U_K * sigma_K) @ Vt_K``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedkd_mpi.codecs.base import Codec, CodecState
from fedkd_mpi.codecs.linalg import Factorization, choose_rank, factorize, server_average
from fedkd_mpi.tensors import DENSE, Payload, TensorSpec

__all__ = ["DENSE", "SVDCodec", "TensorSpec", "choose_rank", "decode", "encode",
           "energy_threshold"]


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


def encode(
    tensors: Sequence[torch.Tensor | None], specs: Sequence[TensorSpec], threshold: float | None,
    *, method: str = "auto", factors: Mapping[int, Factorization] | None = None,
    max_rank: int | None = None, dtype: np.dtype | type = np.float32,
) -> Payload:
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
    return Payload(ranks, body)


def payload_floats(ranks: np.ndarray, specs: Sequence[TensorSpec]) -> int:
    """float32 values a body must hold for these ranks (the byte formula of §5.6, / 4)."""
    return sum(spec.floats(int(k)) for k, spec in zip(ranks, specs, strict=True))


def decode(
    enc: Payload, specs: Sequence[TensorSpec], device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Rebuild the tensors (float32, original shapes) from ranks and body, on the CPU; then
    moved to ``device``."""
    need = payload_floats(enc.meta, specs)
    if enc.body.size != need:
        raise ValueError(f"payload holds {enc.body.size} floats, ranks require {need}")
    # rebuilt on the CPU, then moved: every rank gets the same bits whatever its device (a
    # CPU server's replica checksum against CUDA clients)
    body = torch.from_numpy(np.ascontiguousarray(enc.body).astype(np.float32, copy=False))
    out: list[torch.Tensor] = []
    pos = 0
    for k, spec in zip(enc.meta.tolist(), specs, strict=True):
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
        out.append(mat.reshape(spec.shape).clone().to(device))
    return out


@dataclass
class SVDState(CodecState):
    """Error feedback (``svd.error_feedback``): per tensor, what the last message missed."""

    residual: list[torch.Tensor] | None = None


class SVDCodec(Codec):
    """Truncated SVD at the round's energy share T (``svd`` section); FedKD's own codec."""

    name = "svd"
    State = SVDState

    def __init__(self, settings, specs, seed, rounds):
        super().__init__(settings, specs, seed, rounds)
        self.wire_dtype = np.dtype(settings.factor_dtype)  # type: ignore[misc]

    section = "svd"
    meta_means = "rank"

    @property
    def extended(self) -> bool:
        """Any extension beyond the paper (error feedback, float16 factors, a rank cap)."""
        s = self.settings
        return s.error_feedback or s.factor_dtype != "float32" or s.max_rank is not None

    def energy_threshold(self, rnd: int) -> float:
        s = self.settings
        return energy_threshold(s.t_start, s.t_end, rnd, self.rounds, s.schedule)

    def encode(self, tensors, rnd, state):
        s = self.settings
        if not self.extended:
            return encode(tensors, self.specs, self.energy_threshold(rnd), method=s.method)
        tensors = list(tensors)
        if s.error_feedback and state.residual is not None:
            tensors = [t + r.to(t) for t, r in zip(tensors, state.residual, strict=True)]
        enc = encode(tensors, self.specs, self.energy_threshold(rnd), method=s.method,
                     max_rank=s.max_rank, dtype=self.wire_dtype)
        if s.error_feedback:
            sent = decode(enc, self.specs, tensors[0].device if tensors else "cpu")
            state.residual = [(t.detach().to(torch.float32) - d).clone()
                              for t, d in zip(tensors, sent, strict=True)]
        return enc

    def decode(self, payload, device="cpu"):
        return decode(payload, self.specs, device)

    def body_nbytes(self, meta):
        item = self.wire_dtype.itemsize
        total = 0
        for k, spec in zip(np.asarray(meta).tolist(), self.specs, strict=True):
            if k != DENSE and not 1 <= k <= min(spec.rows, spec.cols):
                raise ValueError(f"tensor {spec.name}: rank {k} outside "
                                 f"[1, {min(spec.rows, spec.cols)}] and not {DENSE} (dense)")
            total += item * spec.floats(k)
        return total

    def aggregate(self, payloads, aggregator, num_samples, rnd, state):
        """With a plain weighted-mean aggregator (``foldable_weights``) and no extension,
        average the factors exactly without forming the dense mean where that is cheaper
        (``svd.server_path``); any other aggregator is called on the decoded updates."""
        w = aggregator.foldable_weights(num_samples)
        s = self.settings
        if w is None or self.extended or s.server_path == "dense":
            return super().aggregate(payloads, aggregator, num_samples, rnd, state)
        w = np.asarray(w, dtype=np.float64)
        w = w / w.sum()
        thr = self.energy_threshold(rnd)
        dense, facts = server_average(payloads, w, self.specs, thr, s.server_path)
        return encode(dense, self.specs, thr, method=s.method, factors=facts)
