"""Codec micro-benchmark: every encode path and the server path, on transformer shapes.

Update matrices (synthetic, stated in docs/PERFORMANCE.md): A = U diag(j^-alpha) V^T + noise
(random orthonormal U, V; Gaussian noise at 1e-3 of the spectrum's scale), with
alpha = 1.0 ("decaying": fine-tuning-like, a few directions carry most energy) and
alpha = 0.3 ("flat": like the quickstart's from-scratch Adam updates, nearly full rank).

Encode: time of ``factorize`` per path (full | gram | randomized | auto) at T, kept energy
measured from the reconstruction, rank. Server: N clients each send the exact truncated SVD of
their own update at T; time of (a) the dense path as the code runs it (decode every client,
float64 average, full SVD of the average), (b) a plain full SVD of the dense average alone,
(c) the factored path (``factored_sum``: QR of the stacked factors + SVD of the core).
Paths are interleaved within each repetition (same load for all); medians and min-max over
repetitions, and the median of per-repetition ratios, are printed.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_codec.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedkd_mpi.codecs.linalg import factored_sum, factorize, pick_method

SHAPES = [(64, 64), (64, 128), (128, 64), (384, 384), (384, 1536), (1536, 384), (768, 768),
          (768, 3072)]


def update_matrix(p: int, q: int, alpha: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = min(p, q)
    u = torch.linalg.qr(torch.randn(p, r, generator=g)).Q
    v = torch.linalg.qr(torch.randn(q, r, generator=g)).Q
    s = torch.arange(1, r + 1, dtype=torch.float32) ** -alpha
    noise = 1e-3 * float(s[0]) * torch.randn(p, q, generator=g) / r**0.5
    return (u * s) @ v.T + noise


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def timed(fn, *args):
    t = clock()
    out = fn(*args)
    return clock() - t, out


def kept(a: torch.Tensor, f) -> float:
    k = f.rank
    rec = (f.u[:, :k] * f.s[:k]) @ f.vt[:k]
    return 1.0 - float(((a - rec).double() ** 2).sum() / (a.double() ** 2).sum())


def dense_path(us, ss, vts, w, t):
    """The server as the dense path runs it: decode, float64 average, full SVD at T."""
    acc = None
    for wi, u, s, vt in zip(w, us, ss, vts, strict=True):
        d = ((u * s) @ vt).double()
        acc = wi * d if acc is None else acc.add_(d, alpha=wi)
    return factorize([acc.float()], t, "full")[0]


def stats(xs: list[float], scale: float = 1e3) -> str:
    x = np.asarray(xs) * scale
    return f"{np.median(x):8.2f} [{x.min():.2f}-{x.max():.2f}]"


def bench_encode(shapes, alphas, thresholds, reps: int) -> None:
    print("\n== encode: factorize() per path; time ms median [min-max] over "
          f"{reps} reps; x = median ratio full/path; kept = energy kept; K = rank ==")
    for alpha in alphas:
        for p, q in shapes:
            a = update_matrix(p, q, alpha, p * 7 + q)
            s = torch.linalg.svdvals(a.double())
            e = torch.cumsum(s**2, 0) / (s**2).sum()
            print(f"alpha={alpha} {p}x{q}: energy share of the top 10 % / 25 % of the rank: "
                  f"{float(e[max(1, len(e) // 10) - 1]):.3f} / "
                  f"{float(e[max(1, len(e) // 4) - 1]):.3f}")
            for t in thresholds:
                times: dict[str, list[float]] = {m: [] for m in ("full", "gram", "randomized",
                                                                 "auto")}
                res = {}
                for _ in range(reps if min(p, q) >= 256 else 7 * reps):
                    for m in times:
                        dt, (f,) = timed(factorize, [a], t, m)
                        times[m].append(dt)
                        res[m] = f
                auto = pick_method(p, q)
                line = [f"alpha={alpha} {p}x{q} T={t}: auto->{auto}"]
                for m, ts in times.items():
                    ratio = np.median(np.array(times["full"]) / np.array(ts))
                    f = res[m]
                    best = min(times["full"]) / min(ts)
                    line.append(f"{m}{'(' + f.method + ')' if f.method != m else ''} "
                                f"{stats(ts)} ms x{ratio:.2f} (best-of x{best:.2f}) K={f.rank} "
                                f"kept={kept(a, f):.4f}")
                print("\n    ".join(line), flush=True)


def bench_server(shapes, alphas, thresholds, clients: list[int], reps: int,
                 k_fracs: list[float]) -> None:
    print("\n== server: N clients' truncated updates -> re-factorised average; ms median "
          f"[min-max] over {reps} reps (x7 below 256); speedup = median of per-rep ratios ==")
    cases = [(t, None) for t in thresholds] + [(0.7, fr) for fr in k_fracs]
    for alpha in alphas:
        for p, q in shapes:
            for t, frac in cases:
                for n in clients:
                    mats = [update_matrix(p, q, alpha, 1000 * c + p + q) for c in range(n)]
                    fs = factorize(mats, t, "full")
                    if frac is not None:  # clients send K = frac * min(P, Q) (given ranks)
                        for f in fs:
                            f.rank = max(1, round(frac * min(p, q)))
                    us = [f.u[:, : f.rank].contiguous() for f in fs]
                    ss = [f.s[: f.rank].contiguous() for f in fs]
                    vts = [f.vt[: f.rank].contiguous() for f in fs]
                    w = [1.0 / n] * n
                    nk = sum(x.numel() for x in ss)

                    avg = sum(wi * (u * s) @ vt for wi, u, s, vt in zip(w, us, ss, vts,
                                                                          strict=True))
                    td, tp, tf = [], [], []
                    for _ in range(reps if min(p, q) >= 256 else 7 * reps):
                        dt, fd = timed(dense_path, us, ss, vts, w, t)
                        td.append(dt)
                        dt, _ = timed(torch.linalg.svd, avg, False)
                        tp.append(dt)
                        dt, ff = timed(factored_sum, us, ss, vts, w, t)
                        tf.append(dt)
                    sp_d = np.median(np.array(td) / np.array(tf))
                    sp_p = np.median(np.array(tp) / np.array(tf))
                    diff = (ff.u[:, :ff.rank] * ff.s[:ff.rank]) @ ff.vt[:ff.rank] - (
                        fd.u[:, :fd.rank] * fd.s[:fd.rank]) @ fd.vt[:fd.rank]
                    err = float(diff.norm() / avg.norm())
                    tag = f"K=frac {frac}" if frac is not None else f"T={t}"
                    print(f"alpha={alpha} {p}x{q} {tag} n={n} client K={[f.rank for f in fs]} "
                          f"(N={nk}, min(P,Q)={min(p, q)}):\n    dense path {stats(td)} | "
                          f"plain SVD of dense avg {stats(tp)} | factored {stats(tf)} | "
                          f"speedup vs dense path x{sp_d:.1f} (best-of x{min(td) / min(tf):.1f}"
                          f"), vs plain SVD x{sp_p:.1f} (best-of x{min(tp) / min(tf):.1f}) | "
                          f"K dense {fd.rank} factored {ff.rank} | rel. diff {err:.1e}",
                          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.3])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.95])
    ap.add_argument("--clients", type=int, nargs="+", default=[3])
    ap.add_argument("--shapes", nargs="+", default=[f"{p}x{q}" for p, q in SHAPES])
    ap.add_argument("--skip", choices=["encode", "server"], default=None)
    ap.add_argument("--k-frac", type=float, nargs="*", default=[0.08, 0.25],
                    help="server: also clients sending K = frac * min(P, Q) (the quickstart's "
                    "64x64 uploads have K/64 = 0.08 at T=0.4 to 0.25 at T=0.7)")
    ap.add_argument("--clock", choices=list(CLOCK), default="wall",
                    help="cpu: this process's CPU time (one torch thread), which leaves out "
                    "the time the process waits for a core on a loaded machine")
    a = ap.parse_args()
    global clock
    clock = CLOCK[a.clock]
    torch.set_num_threads(1)
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu, "
          f"clock {a.clock}")
    factorize([update_matrix(64, 64, 1.0, 0)], 0.9, "full")  # warm-up (library init)
    factorize([update_matrix(64, 64, 1.0, 0)], 0.9, "gram")
    if a.skip != "encode":
        bench_encode(shapes, a.alphas, a.thresholds, a.reps)
    if a.skip != "server":
        bench_server(shapes, a.alphas, a.thresholds, a.clients, a.reps, a.k_frac)


if __name__ == "__main__":
    main()
