"""Faults during real ``mpiexec`` runs: rank-0 failure, a client SIGKILLed mid-round, a live
reader, NaN/Inf under both ``runtime.nonfinite`` policies, a clean end. Every job runs under a
timeout (``run_job``), so a hang fails the test instead of blocking CI."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import h5py
import numpy as np

from fedkd_mpi.comm.wire import SKIP_BYTES
from fedkd_mpi.storage.h5 import open_live

from ..conftest import FEDKD, MPIEXEC, ROOT, TINY


def _fail(res) -> str:
    return f"rc={res.returncode}\nSTDOUT:\n{res.stdout}\nSTDERR:\n{res.stderr}"


def test_rank0_exception_marks_file_failed(tiny_run):
    res, out = tiny_run(2, env={"FEDKD_MPI_FAULT": "0:2"}, timeout=120)
    assert res.returncode != 0, _fail(res)
    assert "fedkd-mpi: rank 0 failed:" in res.stderr and "Traceback" in res.stderr
    with open_live(out) as f:
        assert f.attrs["status"] == "failed" and "injected fault" in f.attrs["error"]
        assert list(f["rounds/round"][:]) == [1]


def test_sigkill_in_round_3_leaves_rounds_1_2_readable(tmp_path):
    """A client rank killed from outside with SIGKILL in the middle of round 3: mpiexec ends
    the job (no hang), the file keeps rounds 1-2, a reader opens it while the job runs, and
    ``fedkd-mpi report`` reads it afterwards."""
    out, pidfile = tmp_path / "killed.h5", tmp_path / "rank1.pid"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPIEXEC_TIMEOUT": "150",
           "FEDKD_MPI_FAULT": "1:3:hang", "FEDKD_MPI_FAULT_PIDFILE": str(pidfile)}
    cmd = [str(MPIEXEC), "-n", "2", str(FEDKD), "run", str(TINY), f"output={out}",
           "train.rounds=4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while not pidfile.exists():  # rank 1 reached round 3 (after training) and waits
            assert proc.poll() is None, "job ended before the fault point"
            assert time.monotonic() < deadline, "rank 1 never reached round 3"
            time.sleep(0.2)
        with open_live(out) as f:  # a reader while the writer is live
            assert f.attrs["status"] == "running"
            assert list(f["rounds/round"][:]) == [1, 2]
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        proc.communicate(timeout=60)  # mpiexec must end the job by itself (no hang)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    with open_live(out) as f:
        assert list(f["rounds/round"][:]) == [1, 2]
        assert f["clients/mentee_metric"].shape == (2, 3)
        assert np.isfinite(f["clients/mentee_metric"][:]).all()
    rep = subprocess.run([str(FEDKD), "report", "--no-figures", str(out)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert rep.returncode == 0, _fail(rep)
    assert "2 of 4" in rep.stdout


def test_nonfinite_stop_names_client_and_round(tiny_run):
    res, out = tiny_run(2, "runtime.nonfinite=stop", env={"FEDKD_MPI_NAN": "1:2:loss"},
                        timeout=120)
    assert res.returncode != 0, _fail(res)
    assert "NonFiniteError: client 1, round 2" in res.stderr
    assert "non-finite training loss" in res.stderr
    with open_live(out) as f:
        assert f.attrs["status"] == "failed" and "client 1, round 2" in f.attrs["error"]
        assert list(f["rounds/round"][:]) == [1]


def test_nonfinite_update_stop_is_the_default(tiny_run):
    res, out = tiny_run(2, env={"FEDKD_MPI_NAN": "2:1:update"}, timeout=120)
    assert res.returncode != 0, _fail(res)
    assert "client 2, round 1: non-finite update" in res.stderr
    with open_live(out) as f:
        assert f.attrs["status"] == "failed" and len(f["rounds/round"]) == 0


def test_nonfinite_skip_drops_updates_and_restores_clients(tiny_run):
    """Round 2: client 1's loss and client 2's update are NaN -> both skipped. Round 3: every
    client is poisoned -> nothing to average, the server broadcasts SKIP and the shared model
    stays. Round 4 trains normally: no NaN persisted anywhere (a NaN averaged into the shared
    model or left in client 1's mentor would make every later loss NaN)."""
    nan = "1:2:loss,2:2:update,0:3:loss,1:3:update,2:3:loss"
    res, out = tiny_run(2, "train.rounds=4", "runtime.nonfinite=skip",
                        env={"FEDKD_MPI_NAN": nan}, timeout=150)
    assert res.returncode == 0, _fail(res)
    assert "client 1, round 2" in res.stderr and "update skipped" in res.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        skipped = f["clients/skipped"][:]
        assert skipped.dtype == np.int8
        assert skipped.tolist() == [[0, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]]
        up, down = f["clients/bytes_up"][:], f["clients/bytes_down"][:]
        assert (up[skipped == 1] == SKIP_BYTES).all() and (up[skipped == 0] > SKIP_BYTES).all()
        assert (down[2] == SKIP_BYTES).all() and (down[[0, 1, 3]] > SKIP_BYTES).all()
        mentee = f["clients/mentee_metric"][:]
        assert np.array_equal(mentee[2], mentee[1]), "SKIP broadcast: shared model unchanged"
        loss = f["clients/mentee_train_loss"][:]
        assert np.isnan(loss[skipped == 1]).all() and np.isfinite(loss[skipped == 0]).all()
        assert np.isfinite(f["clients/mentor_metric"][:]).all()
        assert (f["layers/rank_up"][2] == -1).all() and (f["layers/rank_down"][2] == -1).all()
        cs = f["replicas/checksum"][:]
        assert (cs == cs[:, :1]).all()
