"""Factorisation paths of the SVD codec and the factored server aggregation.

Every path returns a :class:`Factorization`: leading singular triplets of a P x Q matrix A
(descending), the rank K chosen by the energy rule, and ``total = ||A||_F^2``. The codec sends
``U[:, :K] | s[:K] | Vt[:K]``, so what matters is the reconstruction ``A_K = U_K S_K Vt_K`` and
its kept energy ``||A_K||_F^2 / ||A||_F^2``, which is >= T on every path.

Paths (``method``):

* ``full``: ``torch.linalg.svd`` in float32; K = :func:`~fedkd_mpi.codecs.svd.choose_rank` of
  all singular values. The reference.
* ``gram``: eigendecomposition of the smaller Gram matrix (A^T A or A A^T) in float64, then
  U = A V / s (or V = A^T U / s). The reconstruction is then exactly the projection A V_K V_K^T,
  whatever the conditioning, and its energy is sum(lambda_K) computed in float64: at least as
  accurate as the float32 reference. K can differ from ``full`` only when a cumulative energy
  share lies within float32 rounding (~1e-6) of T. Falls back to ``full`` for a matrix whose
  K-th singular value is below 1e-7 of the first (division by a numerically zero value).
* ``randomized``: Halko-Martinsson-Tropp range finder with Gaussian sketch of width l (fixed
  seed per shape: deterministic on every rank), ``power_iters`` QR-stabilised power iterations,
  SVD of the small l x Q projection. The projected singular values are lower bounds of the true
  ones (interlacing), and A_K = U_K U_K^T A is an orthogonal projection, so the kept energy
  ``sum(s_K^2) / ||A||_F^2`` (with the *exact* float64 Frobenius norm) is a lower bound of the
  truth: K is the smallest k whose captured energy reaches T, hence K >= the exact rule's K
  (equal when the sketch captured the top subspace; larger by a few otherwise), and the kept
  energy is >= T. If the captured energy does not reach T within l - oversample columns, the
  sketch is widened (x2); past half the rank it is no longer cheaper and the matrix falls
  back to the exact ``full`` path.
* ``auto``: per shape and device (:func:`pick_method`): full below 96, one randomized sketch
  then the exact path from 256, else gram (aspect >= 2) or full.

Same-shape matrices are factorised in one batched call. All paths are device-agnostic torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

METHODS = ("auto", "full", "gram", "randomized")
SERVER_PATHS = ("auto", "dense", "factored")

#: gram path: a kept singular value below this fraction of the first one -> exact SVD instead
GRAM_MIN_RATIO = 1e-7
#: auto: matrices with min(P, Q) below this are small enough that LAPACK's SVD is cheapest
AUTO_SMALL = 96
#: auto: aspect ratio max/min from which the Gram matrix is the cheaper route (CPU)
AUTO_ASPECT = 2.0
#: auto: min(P, Q) from which one randomized attempt is tried first (then the exact path)
AUTO_SKETCH = 256


@dataclass
class Factorization:
    """Leading singular triplets of one P x Q matrix and the energy rule's rank."""

    u: torch.Tensor  # P x m, columns >= rank available
    s: torch.Tensor  # m, descending, float32
    vt: torch.Tensor  # m x Q
    rank: int  # K by the energy rule (0 when the matrix is zero)
    total: float  # ||A||_F^2 in float64
    method: str  # the path that produced it (after any fallback)
    mat: torch.Tensor | None = None  # the dense matrix, when it exists

    @property
    def kept_energy(self) -> float:
        """sum_{j<=K} s_j^2 / ||A||_F^2 (float64)."""
        if self.total <= 0.0 or self.rank == 0:
            return 1.0
        s = self.s[: self.rank].double()
        return float((s * s).sum()) / self.total

    def dense(self) -> torch.Tensor:
        """The matrix itself (built from all available triplets if it was never dense)."""
        if self.mat is not None:
            return self.mat
        return ((self.u.double() * self.s.double()) @ self.vt.double()).float()


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




def _partial_rank(energy: np.ndarray, total: float, threshold: float) -> int | None:
    """Smallest k with sum(energy[:k]) / total >= T, or None if not reached in ``energy``."""
    share = np.cumsum(energy) / total
    hit = np.nonzero(share >= threshold)[0]
    return int(hit[0]) + 1 if hit.size else None


def exact_method(rows: int, cols: int, device: torch.device | str = "cpu") -> str:
    """The cheaper exact path: ``gram`` for aspect ratio >= 2 (CPU) or any non-small matrix on
    CUDA (cuSOLVER eigh + a GEMM beat its SVD; not measured here), else ``full``."""
    small, big = min(rows, cols), max(rows, cols)
    if small < AUTO_SMALL:
        return "full"
    if torch.device(device).type == "cuda":
        return "gram"
    return "gram" if big >= AUTO_ASPECT * small else "full"


def pick_method(rows: int, cols: int, device: torch.device | str = "cpu") -> str:
    """The ``auto`` policy (docs/PERFORMANCE.md has the measurements behind it).

    min(P, Q) < 96: LAPACK's SVD (everything is sub-millisecond). min(P, Q) >= 256:
    ``randomized`` with ONE sketch (width min/8 + 10): it pays off when the update's energy is
    concentrated (3-6x faster on decaying spectra) and costs one sketch (~10-20 % of an SVD)
    before falling back to the exact path when it is not (nearly full-rank updates). Otherwise
    the cheaper exact path (:func:`exact_method`).
    """
    if min(rows, cols) >= AUTO_SKETCH:
        return "randomized"
    return exact_method(rows, cols, device)


# ------------------------------------------------------------------------------------------
# paths (batched: mats is B x P x Q)
# ------------------------------------------------------------------------------------------
def _totals(mats: torch.Tensor) -> np.ndarray:
    m64 = mats.double()
    return (m64 * m64).sum(dim=(-2, -1)).cpu().numpy()


def _full(mats: torch.Tensor, threshold: float) -> list[Factorization]:
    u, s, vt = torch.linalg.svd(mats, full_matrices=False)
    s_np = s.cpu().numpy().astype(np.float64)
    totals = _totals(mats)
    out = []
    for b in range(mats.shape[0]):
        k = choose_rank(s_np[b], threshold) if s_np[b].sum() > 0.0 else 0
        out.append(Factorization(u[b], s[b], vt[b], k, float(totals[b]), "full", mats[b]))
    return out


def _gram(mats: torch.Tensor, threshold: float) -> list[Factorization]:
    p, q = mats.shape[-2:]
    a64 = mats.double()
    tall = p >= q
    g = a64.mT @ a64 if tall else a64 @ a64.mT  # B x min x min
    lam, vec = torch.linalg.eigh(g)  # ascending
    lam, vec = lam.flip(-1).clamp_min(0.0), vec.flip(-1)
    sig = lam.sqrt()
    sig_np = sig.cpu().numpy()
    totals = _totals(mats)
    out: list[Factorization] = []
    for b in range(mats.shape[0]):
        if sig_np[b].sum() <= 0.0:
            z = mats.new_zeros(0)
            out.append(Factorization(z.view(p, 0), z, z.view(0, q), 0, float(totals[b]),
                                     "gram", mats[b]))
            continue
        k = choose_rank(sig_np[b], threshold)
        if sig_np[b][k - 1] <= GRAM_MIN_RATIO * sig_np[b][0]:
            out += _full(mats[b : b + 1], threshold)
            continue
        w = vec[b][:, :k]  # the small side's singular vectors
        sk = sig[b][:k]
        if tall:  # A = U S V^T: V = w, U = A V / s
            u = (a64[b] @ w) / sk
            vt = w.mT
        else:  # U = w, V^T = U^T A / s
            u = w
            vt = (w.mT @ a64[b]) / sk[:, None]
        out.append(Factorization(u.float(), sk.float(), vt.float().contiguous(), k,
                                 float(totals[b]), "gram", mats[b]))
    return out


def _sketch(q: int, width: int, batch: int, seed: int, device: torch.device) -> torch.Tensor:
    """Gaussian test matrix, drawn on the CPU (same bits on any device), fixed seed."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + q * 7919 + width)
    return torch.randn(batch, q, width, generator=g).to(device)


def _randomized(mats: torch.Tensor, threshold: float, oversample: int, power_iters: int,
                seed: int, attempts: int = 8, fallback: str = "full") -> list[Factorization]:
    """Randomized SVD with adaptive sketch width (at most ``attempts`` sketches); the exact
    ``fallback`` path when it stops paying off."""
    bsz, p, q = mats.shape
    r = min(p, q)
    totals = _totals(mats)
    out: list[Factorization | None] = [None] * bsz
    todo = [b for b in range(bsz) if totals[b] > 0.0]
    for b in range(bsz):
        if totals[b] <= 0.0:
            z = mats.new_zeros(0)
            out[b] = Factorization(z.view(p, 0), z, z.view(0, q), 0, 0.0, "randomized", mats[b])
    width = min(r, max(16, r // 8) + oversample)
    while todo and threshold < 1.0 and width <= r // 2 + oversample and attempts > 0:
        attempts -= 1
        a = mats[todo]
        y = a @ _sketch(q, width, len(todo), seed, a.device)
        basis = torch.linalg.qr(y).Q
        for _ in range(power_iters):
            z = torch.linalg.qr(a.mT @ basis).Q
            basis = torch.linalg.qr(a @ z).Q
        ub, s, vt = torch.linalg.svd(basis.mT @ a, full_matrices=False)
        u = basis @ ub
        s_np = s.double().cpu().numpy()
        left = []
        for j, b in enumerate(todo):
            k = _partial_rank(s_np[j] ** 2, float(totals[b]), threshold)
            if k is not None and (k <= width - oversample or width >= r):
                out[b] = Factorization(u[j], s[j], vt[j], k, float(totals[b]), "randomized",
                                       mats[b])
            else:
                left.append(b)
        todo = left
        width = min(r, 2 * width)
    if todo:  # not cheaper any more (or T >= 1): exact
        exact = _gram if fallback == "gram" else _full
        for b, f in zip(todo, exact(mats[todo], threshold), strict=True):
            out[b] = f
    return [f for f in out if f is not None]


def factorize(mats: Sequence[torch.Tensor], threshold: float, method: str = "auto", *,
              oversample: int = 10, power_iters: int = 2, seed: int = 0) -> list[Factorization]:
    """Factorise each 2-D float32 matrix; same-shape matrices go through one batched call.

    Returns one :class:`Factorization` per input, in input order. ``threshold`` is T of the
    energy rule (T >= 1: full rank).
    """
    if method not in METHODS:
        raise ValueError(f"svd method {method!r}: expected one of {', '.join(METHODS)}")
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault((tuple(m.shape), m.device, m.dtype), []).append(i)
    out: list[Factorization | None] = [None] * len(mats)
    for (shape, device, _), idx in groups.items():
        batch = torch.stack([mats[i] for i in idx]) if len(idx) > 1 else mats[idx[0]][None]
        how = pick_method(*shape, device) if method == "auto" else method
        if how == "gram":
            res = _gram(batch, threshold)
        elif how == "randomized":
            res = _randomized(batch, threshold, oversample, power_iters, seed,
                              attempts=1 if method == "auto" else 8,
                              fallback=exact_method(*shape, device) if method == "auto"
                              else "full")
        else:
            res = _full(batch, threshold)
        for i, f in zip(idx, res, strict=True):
            out[i] = f
    return [f for f in out if f is not None]


# ------------------------------------------------------------------------------------------
# server: exact SVD of a weighted sum of low-rank terms without the dense P x Q matrix
# ------------------------------------------------------------------------------------------
def factored_sum(us: Sequence[torch.Tensor], ss: Sequence[torch.Tensor],
                 vts: Sequence[torch.Tensor], weights: Sequence[float],
                 threshold: float) -> Factorization:
    """Exact SVD of sum_i w_i U_i diag(s_i) Vt_i, in float64, in O((P+Q) N^2), N = sum K_i.

    [U_1..U_n] = Q_u R_u and [V_1..V_n] = Q_v R_v (thin QR); the sum is
    Q_u (R_u blockdiag(w_i s_i) R_v^T) Q_v^T, so the SVD of the N x N core gives it exactly.
    Its singular values are the whole non-zero spectrum, so ``total`` and the rank rule are
    those of the (never built) dense average.
    """
    ucat = torch.cat([u.double() for u in us], dim=1)
    vcat = torch.cat([vt.double().mT for vt in vts], dim=1)
    d = torch.cat([w * s.double() for w, s in zip(weights, ss, strict=True)])
    qu, ru = torch.linalg.qr(ucat)
    qv, rv = torch.linalg.qr(vcat)
    um, sm, vmt = torch.linalg.svd((ru * d) @ rv.mT)
    sig = sm.cpu().numpy()
    total = float((sig * sig).sum())
    k = choose_rank(sig, threshold) if total > 0.0 else 0
    return Factorization((qu @ um).float(), sm.float(), (vmt @ qv.mT).float().contiguous(), k,
                         total, "factored")


def factored_pays(p: int, q: int, n_factors: int) -> bool:
    """``auto`` server rule: factored when N = sum K_i is at most a third of min(P, Q).

    Dense: N rank-K products (P Q N) + an SVD of P x Q (~ P Q min(P, Q) with a large constant);
    factored: two QRs O((P + Q) N^2) + an N x N SVD. Past N ~ min/3 the QR constants catch up.
    """
    return 0 < n_factors and 3 * n_factors <= min(p, q)


def _views(enc, specs) -> list[tuple[torch.Tensor, ...]]:
    """Per tensor of an SVD-codec body: (mat,) when dense, (u, s, vt) when factored."""
    body = torch.from_numpy(np.ascontiguousarray(enc.body))
    out: list[tuple[torch.Tensor, ...]] = []
    pos = 0
    for k, spec in zip(enc.meta.tolist(), specs, strict=True):
        p, q = spec.rows, spec.cols
        if k < 0:
            out.append((body[pos : pos + p * q].view(p, q),))
            pos += p * q
        else:
            out.append((body[pos : pos + p * k].view(p, k), body[pos + p * k : pos + p * k + k],
                        body[pos + p * k + k : pos + k * (p + q + 1)].view(k, q)))
            pos += k * (p + q + 1)
    return out


def server_average(updates, weights: np.ndarray, specs, threshold: float | None,
                   path: str = "auto") -> tuple[list[torch.Tensor | None],
                                                dict[int, Factorization]]:
    """Weighted mean of SVD-codec updates, tensor by tensor, for ``encode(..., factors=)``.

    A tensor that every client sent factored goes the factored way (``path='factored'``, or
    ``'auto'`` when :func:`factored_pays`): its exact SVD by :func:`factored_sum` with the rank
    rule at ``threshold`` (``None``: nothing is factored). Every
    other tensor is decoded and averaged exactly as the dense path does (float32 decode,
    float64 accumulation in client order) and returned as float32; factored ones are None.
    ``weights`` must already sum to 1.
    """
    if path not in SERVER_PATHS:
        raise ValueError(f"server path {path!r}: expected one of {', '.join(SERVER_PATHS)}")
    views = [_views(u, specs) for u in updates]
    w = [float(x) for x in np.asarray(weights, dtype=np.float64)]
    dense: list[torch.Tensor | None] = []
    facts: dict[int, Factorization] = {}
    for j, spec in enumerate(specs):
        parts = [v[j] for v in views]
        if (threshold is not None and path != "dense" and parts
                and all(len(x) == 3 for x in parts)):
            n = sum(x[1].numel() for x in parts)
            if path == "factored" or factored_pays(spec.rows, spec.cols, n):
                facts[j] = factored_sum([x[0] for x in parts], [x[1] for x in parts],
                                        [x[2] for x in parts], w, threshold)
                dense.append(None)
                continue
        acc: torch.Tensor | None = None
        for wi, x in zip(w, parts, strict=True):
            t = (x[0].float() if len(x) == 1 else (x[0].float() * x[1].float()) @ x[2].float())
            if acc is None:
                acc = wi * t.to(torch.float64)
            else:
                acc.add_(t.to(torch.float64), alpha=wi)
        assert acc is not None
        dense.append(acc.to(torch.float32).reshape(spec.shape))
    return dense, facts
