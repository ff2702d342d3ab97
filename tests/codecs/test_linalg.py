"""Factorisation paths of the SVD codec and the factored server average (codecs/linalg.py).

Documented approximation behaviour checked here:
- every path: kept energy ||A_K||^2 / ||A||^2 >= T (measured from the reconstruction);
- gram: same rank as full (ties within 1e-5 of T excluded), same reconstruction to 1e-4;
- randomized: rank >= full's rank, at most max(2, 10 %) more on these spectra, and a
  reconstruction error within 5 % of the exact truncated SVD of the same rank;
- factored server average == SVD of the dense average (same rank, same reconstruction).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd_mpi.codecs.linalg import (
    factored_sum,
    factorize,
    pick_method,
    server_average,
)
from fedkd_mpi.codecs.svd import DENSE, TensorSpec, choose_rank, decode, encode
from fedkd_mpi.config import ConfigError, load_config

SHAPES = [(96, 96), (160, 48), (48, 160)]
TS = [0.4, 0.7, 0.95]


def spectrum_matrix(p: int, q: int, alpha: float, seed: int, noise: float = 1e-3) -> torch.Tensor:
    """Random singular vectors, power-law spectrum j^-alpha, plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    r = min(p, q)
    u = torch.linalg.qr(torch.randn(p, r, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(q, r, generator=g, dtype=torch.float64)).Q
    s = torch.arange(1, r + 1, dtype=torch.float64) ** -alpha
    a = (u * s) @ v.T + noise * torch.randn(p, q, generator=g, dtype=torch.float64) / r**0.5
    return a.float()


def kept(a: torch.Tensor, f) -> float:
    k = f.rank
    rec = (f.u[:, :k].double() * f.s[:k].double()) @ f.vt[:k].double()
    return 1.0 - float(((a.double() - rec) ** 2).sum() / (a.double() ** 2).sum())


def exact_rank_and_margin(a: torch.Tensor, t: float) -> tuple[int, float]:
    s = np.linalg.svd(a.double().numpy(), compute_uv=False)
    share = np.cumsum(s**2) / (s**2).sum()
    return choose_rank(s, t), float(np.min(np.abs(share - t)))


@pytest.mark.parametrize("method", ["full", "gram", "randomized", "auto"])
@pytest.mark.parametrize("shape", SHAPES)
def test_kept_energy_reaches_threshold(method, shape):
    for alpha, seed in [(0.5, 1), (1.5, 2)]:
        a = spectrum_matrix(*shape, alpha, seed)
        for t in TS:
            (f,) = factorize([a], t, method)
            assert kept(a, f) >= t - 2e-6, (method, shape, alpha, t)
            assert abs(kept(a, f) - f.kept_energy) < 1e-5  # reported = measured


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_matches_full(shape):
    for alpha, seed in [(0.5, 3), (1.0, 4), (1.5, 5)]:
        a = spectrum_matrix(*shape, alpha, seed)
        for t in TS:
            k_exact, margin = exact_rank_and_margin(a, t)
            (ff,) = factorize([a], t, "full")
            (fg,) = factorize([a], t, "gram")
            assert fg.method == "gram"
            if margin > 1e-5:
                assert fg.rank == ff.rank == k_exact
            k = fg.rank
            rec_g = (fg.u[:, :k] * fg.s[:k]) @ fg.vt[:k]
            rec_f = (ff.u[:, :k] * ff.s[:k]) @ ff.vt[:k]
            assert torch.allclose(rec_g, rec_f, atol=1e-4 * float(a.abs().max()))


@pytest.mark.parametrize("shape", [(160, 160), (240, 96)])
def test_randomized_rank_and_error(shape):
    for alpha, seed in [(0.5, 6), (1.0, 7), (1.5, 8)]:
        a = spectrum_matrix(*shape, alpha, seed)
        s_exact = np.linalg.svd(a.double().numpy(), compute_uv=False)
        for t in TS:
            k_exact, _ = exact_rank_and_margin(a, t)
            (fr,) = factorize([a], t, "randomized")
            assert kept(a, fr) >= t - 2e-6
            assert fr.rank >= k_exact - (0 if fr.method == "randomized" else 1)
            assert fr.rank <= k_exact + max(2, k_exact // 10), (alpha, t, fr.rank, k_exact)
            err = 1.0 - kept(a, fr)
            best = float((s_exact[fr.rank :] ** 2).sum() / (s_exact**2).sum())
            assert err <= 1.05 * best + 1e-6


def test_randomized_deterministic_and_falls_back_when_not_cheaper():
    a = spectrum_matrix(128, 128, 0.2, 9)  # nearly flat: T = 0.95 needs most of the rank
    f1, f2 = factorize([a], 0.95, "randomized"), factorize([a], 0.95, "randomized")
    assert f1[0].method == "full"
    b = spectrum_matrix(128, 128, 1.5, 10)
    (g1,), (g2,) = factorize([b], 0.7, "randomized"), factorize([b], 0.7, "randomized")
    assert g1.method == "randomized"
    assert torch.equal(g1.u, g2.u) and torch.equal(g1.s, g2.s) and g1.rank == g2.rank
    assert f1[0].rank == f2[0].rank


def test_gram_falls_back_on_numerically_zero_singular_value():
    a = torch.zeros(64, 32)
    a[:, :2] = spectrum_matrix(64, 2, 1.0, 11)  # exactly rank 2
    (f,) = factorize([a], 1.0, "gram")  # T = 1: K = 32, sigma_32 = 0
    assert f.method == "full" and f.rank == 32  # dividing by ~0: exact SVD instead
    assert torch.isfinite(f.u).all()
    (g,) = factorize([a], 0.999, "gram")
    assert g.method == "gram" and g.rank <= 2
    (z,) = factorize([torch.zeros(40, 20)], 0.9, "gram")
    assert z.rank == 0 and z.total == 0.0


def test_batched_equals_one_by_one():
    mats = [spectrum_matrix(96, 48, 1.0, s) for s in range(4)] + [spectrum_matrix(48, 96, 1.0, 9)]
    for method in ["full", "gram", "randomized"]:
        batch = factorize(mats, 0.8, method)
        for a, fb in zip(mats, batch, strict=True):
            (f1,) = factorize([a], 0.8, method)
            assert fb.rank == f1.rank
            k = fb.rank
            assert torch.allclose((fb.u[:, :k] * fb.s[:k]) @ fb.vt[:k],
                                  (f1.u[:, :k] * f1.s[:k]) @ f1.vt[:k], atol=1e-5)


def test_auto_policy():
    assert pick_method(64, 64) == "full" and pick_method(128, 128) == "full"
    assert pick_method(128, 384) == "gram" and pick_method(200, 96, "cuda") == "gram"
    assert pick_method(384, 384) == "randomized" and pick_method(768, 3072) == "randomized"
    flat, steep = spectrum_matrix(256, 256, 0.2, 12), spectrum_matrix(256, 256, 1.5, 13)
    (f,), (g,) = factorize([flat], 0.9, "auto"), factorize([steep], 0.9, "auto")
    assert f.method == "full" and g.method == "randomized"  # one sketch, then exact
    assert kept(flat, f) >= 0.9 - 2e-6 and kept(steep, g) >= 0.9 - 2e-6
    assert f.rank == factorize([flat], 0.9, "full")[0].rank
    with pytest.raises(ValueError, match="svd method"):
        factorize([torch.ones(3, 3)], 0.5, "qr")


@pytest.mark.parametrize("method", ["full", "gram", "randomized"])
def test_encode_paths_roundtrip(method):
    specs = [TensorSpec("a", (160, 48)), TensorSpec("b", (48,)), TensorSpec("c", (96, 96)),
             TensorSpec("d", (160, 48))]
    ts = [spectrum_matrix(160, 48, 1.2, 1), torch.randn(48), spectrum_matrix(96, 96, 1.2, 2),
          spectrum_matrix(160, 48, 1.2, 3)]
    ref = encode(ts, specs, 0.8, method="full")
    enc = encode(ts, specs, 0.8, method=method)
    assert enc.meta[1] == DENSE
    if method != "randomized":
        assert enc.meta.tolist() == ref.meta.tolist()
    for t, d in zip(ts, decode(enc, specs), strict=True):
        e = 1.0 - float(((t - d).double() ** 2).sum() / (t.double() ** 2).sum())
        assert e >= 0.8 - 2e-6


def low_rank_updates(n: int, p: int, q: int, k: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p, k, generator=g) @ torch.randn(k, q, generator=g) / k
            + 0.3 * torch.randn(p, 1, generator=g) @ torch.randn(1, q, generator=g)
            for _ in range(n)]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_factored_sum_equals_dense_svd(n):
    p, q, k = 120, 72, 6
    mats = low_rank_updates(n, p, q, k, n)
    w = np.random.default_rng(n).random(n)
    w = w / w.sum()
    fs = [factorize([m], 0.999, "full")[0] for m in mats]
    us = [f.u[:, : f.rank] for f in fs]
    ss = [f.s[: f.rank] for f in fs]
    vts = [f.vt[: f.rank] for f in fs]
    dense = sum(wi * (u * s) @ vt for wi, u, s, vt in zip(w, us, ss, vts, strict=True))
    s_dense = torch.linalg.svdvals(dense.double())
    for t in [0.5, 0.8, 0.95]:
        fac = factored_sum(us, ss, vts, w, t)
        nf = sum(x.numel() for x in ss)
        assert torch.allclose(fac.s.double()[: min(nf, len(s_dense))],
                              s_dense[: min(nf, len(s_dense))], rtol=1e-5, atol=1e-6)
        assert fac.rank == choose_rank(s_dense.numpy(), t)
        assert abs(fac.total - float((dense.double() ** 2).sum())) < 1e-6 * fac.total
        kk = fac.rank
        ref = factorize([dense], t, "full")[0]
        assert ref.rank == kk
        assert torch.allclose((fac.u[:, :kk] * fac.s[:kk]) @ fac.vt[:kk],
                              (ref.u[:, :kk] * ref.s[:kk]) @ ref.vt[:kk], atol=1e-5)


def test_server_average_factored_equals_dense_path():
    specs = [TensorSpec("w1", (96, 64)), TensorSpec("b1", (64,)), TensorSpec("w2", (64, 160)),
             TensorSpec("w3", (40, 40))]
    updates, n = [], 4
    for c in range(n):
        ts = [low_rank_updates(1, 96, 64, 3, 10 + c)[0], torch.randn(64),
              low_rank_updates(1, 64, 160, 2, 20 + c)[0], torch.randn(40, 40)]
        updates.append(encode(ts, specs, 0.9, method="full"))
    assert all(u.meta[0] != DENSE and u.meta[2] != DENSE for u in updates)
    w = np.arange(1, n + 1, dtype=np.float64)
    w /= w.sum()
    d_dense, f_dense = server_average(updates, w, specs, 0.9, "dense")
    d_fac, f_fac = server_average(updates, w, specs, 0.9, "factored")
    assert not f_dense and sorted(f_fac) == [0, 2]  # w3 went dense on some client
    assert d_fac[0] is None and d_fac[2] is None
    assert torch.equal(d_fac[1], d_dense[1]) and torch.equal(d_fac[3], d_dense[3])
    e_dense = encode(d_dense, specs, 0.9, method="full")
    e_fac = encode(d_fac, specs, 0.9, method="full", factors=f_fac)
    assert e_fac.meta.tolist() == e_dense.meta.tolist()
    for a, b in zip(decode(e_fac, specs), decode(e_dense, specs), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # auto: the factored route only where N = sum K_i <= min(P, Q) / 3
    _, f_auto = server_average(updates, w, specs, 0.9, "auto")
    n0 = sum(int(u.meta[0]) for u in updates)
    assert (0 in f_auto) == (3 * n0 <= 64)


def test_config_keys_validated():
    cfg = load_config(None, ["svd.method=gram", "svd.server_path=factored"])
    assert (cfg.svd.method, cfg.svd.server_path) == ("gram", "factored")
    assert load_config(None).svd.method == "auto"
    assert load_config(None).svd.server_path == "auto"
    with pytest.raises(ConfigError, match=r"svd\.method"):
        load_config(None, ["svd.method=lanczos"])
    with pytest.raises(ConfigError, match=r"svd\.server_path"):
        load_config(None, ["svd.server_path=sparse"])
    # the old names (fedkd.svd_method, fedkd.server_path) still land in the svd section
    old = load_config(None, ["fedkd.svd_method=gram", "fedkd.server_path=factored"])
    assert (old.svd.method, old.svd.server_path) == ("gram", "factored")


def test_job_with_factored_server_and_randomized_clients(tiny_run):
    """A real mpiexec job on every non-default path: replicas bit-identical (checked by the
    server each round), exact byte formula, and the same ranks as the reference paths."""
    import h5py

    res, out = tiny_run(3, "svd.server_path=factored", "svd.method=gram",
                        "train.rounds=2", name="factored.h5")
    assert res.returncode == 0, res.stderr[-2000:]
    ref, out_ref = tiny_run(3, "svd.server_path=dense", "svd.method=full",
                            "train.rounds=2", name="dense.h5")
    assert ref.returncode == 0, ref.stderr[-2000:]
    with h5py.File(out, "r") as f, h5py.File(out_ref, "r") as g:
        assert f.attrs["status"] == "completed"
        ck = f["replicas/checksum"][()]
        assert (ck == ck[:, :1]).all()
        shapes = f["layers/shape"][()]
        p, q = shapes[:, 0], shapes[:, 1]
        for name, per in (("rank_up", f["layers/rank_up"][()]),
                          ("rank_down", f["layers/rank_down"][()][:, None, :])):
            floats = np.where(per < 0, p * q, per * (p + q + 1)).sum(-1)
            got = f[f"clients/bytes_{name[5:]}"][()] - f.attrs["header_bytes"]
            assert (got == 4 * floats).all(), name
        # factored server average == dense average up to rounding: same ranks both ways
        assert np.array_equal(f["layers/rank_up"][()], g["layers/rank_up"][()])
        assert np.array_equal(f["layers/rank_down"][()], g["layers/rank_down"][()])
        up = f["layers/rank_up"][()]
        assert (up > 0).all(axis=1).any(), "no tensor exercised the factored server path"
