"""Every baseline and the FedKD extensions as real mpiexec jobs: HDF5 bytes == codec formula."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from fedkd_mpi.comm.wire import header_bytes


def _quant(meta, shapes):
    numel = shapes[:, 0] * shapes[:, 1]
    return (8 + numel * meta // 8).sum(-1)


def _topk(meta, shapes):
    return (8 * meta).sum(-1)


def _powersgd(meta, shapes):
    p, q = shapes[:, 0], shapes[:, 1]
    return (4 * np.where(meta < 0, p * q, meta * (p + q))).sum(-1)


def _svd(itemsize):
    def f(meta, shapes):
        p, q = shapes[:, 0], shapes[:, 1]
        return (itemsize * np.where(meta < 0, p * q, meta * (p + q + 1))).sum(-1)
    return f


def _scaffold(meta, shapes):  # model delta + control variate, both dense float32
    return 2 * 4 * int((shapes[:, 0] * shapes[:, 1]).sum()) + 0 * meta.sum(-1)


CASES = {
    "fedpaq8": (["algorithm=fedpaq", "fedpaq.bits=8"], _quant, 1),  # 16-bit: unit tests
    "topk": (["algorithm=topk", "topk.ratio=0.05"], _topk, 1),
    "powersgd": (["algorithm=powersgd", "powersgd.rank=2"], _powersgd, 1),
    "scaffold": (["algorithm=scaffold"], _scaffold, 2),
    "fedkd-ef-fp16-cap": (["algorithm=fedkd", "svd.error_feedback=true",
                           "svd.factor_dtype=float16", "svd.max_rank=2"], _svd(2), 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_algorithm_runs_under_mpiexec_with_exact_bytes(tiny_run, name):
    overrides, formula, wire_factor = CASES[name]
    res, out = tiny_run(3, *overrides, "train.rounds=2")
    assert res.returncode == 0, f"STDOUT:\n{res.stdout}\nSTDERR:\n{res.stderr}"
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        shapes = f["layers/shape"][:]
        nl = len(shapes)
        hb = int(f.attrs["header_bytes"])
        assert hb == header_bytes(wire_factor * nl)
        up, down = f["clients/bytes_up"][:], f["clients/bytes_down"][:]
        ru, rd = f["layers/rank_up"][:], f["layers/rank_down"][:]
        assert up.shape == (2, 3) and (up > hb).all()
        assert np.array_equal(up - hb, formula(ru, shapes))
        assert np.array_equal(down - hb, np.repeat(formula(rd, shapes)[:, None], 3, 1))
        cs = f["replicas/checksum"][:]
        assert (cs == cs[:, :1]).all(), "replicas must stay bit-identical"
        m = f["rounds/mentor_metric" if name.startswith("fedkd") else "rounds/mentee_metric"][:]
        assert np.isfinite(m).all()
    dense = 4 * int((shapes[:, 0] * shapes[:, 1]).sum())
    if name == "topk":
        k = [max(1, math.ceil(0.05 * p * q)) for p, q in shapes]
        assert (ru == np.array(k)).all() and (rd == np.array(k)).all()
    if name.startswith("fedpaq"):
        assert (ru == int(name[6:])).all()
    if name == "powersgd":
        assert ((ru == -1) | (ru == 2)).all() and (ru == 2).any()
    if name == "scaffold":
        assert (up - hb == 2 * dense).all()  # twice FedAvg's payload, both ways
    if name.startswith("fedkd"):
        assert (ru <= 2).all() and (ru != 0).all() and (ru == 2).any()


def test_error_feedback_state_survives_kill_and_resume(tmp_path):
    """PowerSGD keeps residuals and warm-start Q per client (Client.state, spilled with
    runtime.resident_clients=1) and on the server (the algorithm's server state): a run killed
    after its round-2 checkpoint and resumed is identical to an uninterrupted one."""
    from ..conftest import TINY, run_job
    from ..runtime.test_resume import COMMON, assert_same_science

    args = ("run", str(TINY), *COMMON, "algorithm=powersgd", "powersgd.rank=2")
    ref = tmp_path / "ref.h5"
    res = run_job(3, *args, f"output={ref}")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "killed.h5"
    res = run_job(3, *args, f"output={out}", "runtime.checkpoint_every=2",
                  env={"FEDKD_MPI_FAULT": "2:4"}, timeout=120)
    assert res.returncode != 0 and "injected fault" in res.stderr
    res = run_job(3, *args, f"output={out}", "runtime.checkpoint_every=2", "--resume")
    assert res.returncode == 0, res.stderr
    assert_same_science(ref, out)
