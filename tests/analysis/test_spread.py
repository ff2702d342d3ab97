"""Per-client scoring, validation split, loss parts and paired differences, on run files of
real mpiexec jobs; every figure is recomputed here from the raw HDF5 datasets."""

from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import stats

from fedkd_mpi.analysis import load
from fedkd_mpi.analysis.compare import compare
from fedkd_mpi.analysis.spread import paired, spread
from fedkd_mpi.cli import main

from ..conftest import TINY, run_job

PARTS = ("ce_t", "ce_s", "kl_t", "kl_s", "hidden", "attention", "weight")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """FedKD and local-only mentors on the same 4 clients with a validation split, 2 rounds."""
    d = tmp_path_factory.mktemp("spread")
    out = {}
    for alg in ("fedkd", "local"):
        path = d / f"{alg}.h5"
        res = run_job(3, "run", str(TINY), f"output={path}", f"algorithm={alg}",
                      "data.num_clients=4", "data.val_fraction=0.2", "train.rounds=2")
        assert res.returncode == 0, res.stderr
        out[alg] = path
        out[f"{alg}_stdout"] = res.stdout
    return out


def _last(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[f"clients/{name}"][-1]


def test_loss_parts_per_client_and_round(runs):
    with h5py.File(runs["fedkd"], "r") as f:
        for p in PARTS:
            c, r = f[f"clients/loss_{p}"][()], f[f"rounds/loss_{p}"][()]
            assert c.shape == (2, 4) and np.isfinite(c).all()
            np.testing.assert_allclose(r, c.mean(axis=1))
        ce = f["clients/loss_ce_t"][()] + f["clients/loss_ce_s"][()]
        # w = 1/(CE_t + CE_s) per step: its mean over steps is >= 1/mean (Jensen), and a
        # constant 1 (adaptive weight off) would fail it
        assert (f["clients/loss_weight"][()] >= 1.0 / ce - 1e-9).all()
        assert (f["clients/loss_weight"][()] < 1.0).all()
    with h5py.File(runs["local"], "r") as f:
        assert not [k for k in f["clients"] if k.startswith("loss_")]


def test_validation_split_recorded_and_disjoint_sizes(runs):
    with h5py.File(runs["fedkd"], "r") as f:
        val = f["partition/val_label_hist"][()].sum(axis=1)
        test = f["partition/test_label_hist"][()].sum(axis=1)
        train = f["partition/num_train"][()]
        assert (val > 0).all()
        share = train + test + val  # per_client: every example of a share in one split
        np.testing.assert_array_equal(val, np.maximum(1, np.round(0.2 * share)))
        for m in ("mentor", "mentee"):
            v = f[f"clients/val_{m}_metric"][()]
            assert np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all()
            assert not np.array_equal(v, f[f"clients/{m}_metric"][()])


def test_spread_matches_datasets(runs):
    run = load(runs["fedkd"])
    for split, pre in (("test", ""), ("val", "val_")):
        x = _last(runs["fedkd"], f"{pre}mentor_metric")
        sp = spread(run, "mentor", split)
        assert sp.round == 2 and sp.n == 4
        assert sp.mean == pytest.approx(x.mean()) and sp.worst == x.min()
        assert sp.worst_client == int(np.argmin(x))
        assert sp.std == pytest.approx(x.std(ddof=1))
        assert sp.p10 == pytest.approx(np.percentile(x, 10))
        with h5py.File(runs["fedkd"], "r") as f:
            n = f[f"partition/{split}_label_hist"][()].sum(axis=1)
        assert sp.pooled == pytest.approx((x * n).sum() / n.sum())  # accuracy over all


def test_paired_difference_and_interval(runs):
    a, b = _last(runs["fedkd"], "mentor_metric"), _last(runs["local"], "mentor_metric")
    d = a - b
    p = paired(load(runs["fedkd"]), load(runs["local"]), "mentor")
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / math.sqrt(4)
    assert p.n == 4 and p.mean == pytest.approx(d.mean())
    assert (p.lo, p.hi) == pytest.approx((d.mean() - half, d.mean() + half))
    assert (p.wins, p.losses) == (int((d > 0).sum()), int((d < 0).sum()))
    # the mentee of FedKD against the local mentor: models named separately
    q = paired(load(runs["fedkd"]), load(runs["local"]), "mentee", "mentor")
    assert q.mean == pytest.approx((_last(runs["fedkd"], "mentee_metric") - b).mean())


def test_summary_report_and_compare_show_spread(runs, capsys):
    out = runs["fedkd_stdout"]
    assert "mentor held-out per client (round 2)" in out and "worst" in out
    assert "mentee validation per client" in out
    rc = main(["report", str(runs["fedkd"]), "--no-figures", "--baseline", str(runs["local"])])
    text = capsys.readouterr().out
    assert rc == 0
    d = (_last(runs["fedkd"], "mentor_metric") - _last(runs["local"], "mentor_metric")).mean()
    assert re.search(rf"mentor held-out minus local\.h5 +{re.escape(f'{d:+.4f}')}", text)
    assert "loss parts, last round" in text and "kl_t" in text
    md, _, per_run, _ = compare([load(runs["fedkd"]), load(runs["local"])], baseline="local")
    assert f"{d:+.4f}" in md
    assert per_run["worst_mentor"].tolist() == pytest.approx(
        [_last(runs[k], "mentor_metric").min() for k in ("fedkd", "local")])
    with pytest.raises(KeyError, match="not a group"):
        compare([load(runs["fedkd"])], baseline="fedavg")
