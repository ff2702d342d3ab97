"""One owner per output: the lease ``<output>.lock`` (fedkd_mpi/storage/lease.py) under real
``mpiexec`` jobs on this host, and its rules on real lease files of owners elsewhere.

Before the lease, two jobs started together on one output both exited 0 (one job's results
silently lost, the loser printing the winner's summary as its own), and a ``--resume`` of a
live run replaced its file under it (the live run then ended ``failed``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from fedkd_mpi.storage.lease import Lease, LeaseHeld, lease_path, read_holder

from ..conftest import FEDKD, MPIEXEC, ROOT, TINY, run_job
from .test_reliability import Job

N = 2


def _start(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPIEXEC_TIMEOUT": "200"}
    return subprocess.Popen([str(MPIEXEC), "-n", str(N), str(FEDKD), "run", str(TINY),
                             f"output={out}", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_two_jobs_on_one_output_exactly_one_runs(tmp_path, overwrite):
    out = tmp_path / "both.h5"
    extra = ("--overwrite",) if overwrite else ()
    jobs = [_start(out, *extra) for _ in range(2)]
    codes, errs = [], []
    for p in jobs:
        _, err = p.communicate(timeout=240)
        codes.append(p.returncode)
        errs.append(err)
    assert sorted(codes) == [0, 2], (codes, errs)
    loser = errs[codes.index(2)].strip().splitlines()
    assert len(loser) == 1, loser
    assert re.fullmatch(rf"launch error: 'output' {re.escape(str(out))} is in use by another "
                        r"job: run by pid \d+ on \S+ since .*, last heartbeat \d+ s ago "
                        rf"\(lease {re.escape(str(lease_path(out)))}\); wait for it to end, "
                        "stop it, or choose another output", loser[0]), loser[0]
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        assert len(f["rounds/round"]) == 3
    assert not lease_path(out).exists()  # released by the winner


def test_resume_of_a_live_run_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "live.h5"
    job = Job(tmp_path, f"output={out}", "train.rounds=400", "runtime.checkpoint_every=1")
    try:
        job.wait_for("round 2/400")
        res = run_job(N, "run", str(TINY), f"output={out}", "train.rounds=400",
                      "runtime.checkpoint_every=1", "--resume", timeout=60)
        assert res.returncode == 2, res.stderr
        (line,) = res.stderr.strip().splitlines()
        assert "is in use by another job: run by pid" in line, line
        assert "round 3/400" not in res.stdout
        os.killpg(job.proc.pid, signal.SIGTERM)  # the live run goes on to its own end
        assert job.wait() == 3, job.stderr
    finally:
        job.kill()
    with h5py.File(out, "r") as f:  # before the lease: 'failed', a shard missing
        assert f.attrs["status"] == "interrupted"
        done = len(f["rounds/round"])
    man = json.loads(Path(f"{out}.ckpt/manifest.json").read_text())
    assert man["round"] == done
    assert not lease_path(out).exists()


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _lease_file(out: Path, host: str, pid: int, age_s: float) -> None:
    now = time.time()
    lease_path(out).write_text(json.dumps({
        "host": host, "pid": pid, "writer": f"{host}:{pid}:1", "command": "run",
        "job": "f" * 32, "started_unix": now - age_s - 60, "heartbeat_unix": now - age_s}))


def test_a_stale_lease_is_taken_over_with_a_note(tmp_path):
    """The owner's pid on this host is gone: taken over at once, the note in the run file."""
    out = tmp_path / "stale.h5"
    _lease_file(out, os.uname().nodename, _dead_pid(), 0)
    res = run_job(N, "run", str(TINY), f"output={out}", timeout=120)
    assert res.returncode == 0, res.stderr
    with h5py.File(out, "r") as f:
        (note,) = [str(x) for x in f.attrs["lease_takeovers"]]
    assert note.startswith("took over a stale lease (run by pid ") and "last heartbeat" in note
    assert not lease_path(out).exists()


def test_owners_on_other_hosts_are_judged_by_their_heartbeat(tmp_path):
    out = tmp_path / "remote.h5"
    _lease_file(out, "node-elsewhere", 4242, 10)  # fresh: refused, its file left alone
    before = hashlib.sha256(lease_path(out).read_bytes()).hexdigest()
    with pytest.raises(LeaseHeld, match=r"run by pid 4242 on node-elsewhere since .* last "
                       r"heartbeat 10 s ago"):
        Lease(out, "run", timeout_s=60).acquire()
    assert hashlib.sha256(lease_path(out).read_bytes()).hexdigest() == before
    _lease_file(out, "node-elsewhere", 4242, 61)  # silent for longer than the timeout
    lease = Lease(out, "run", timeout_s=60).acquire()
    assert lease.takeover and "pid 4242 on node-elsewhere" in lease.takeover
    assert read_holder(lease_path(out)).job == lease.job
    lease.release()
    assert not lease_path(out).exists()


def test_unreadable_lease_counts_by_its_age_and_heartbeat_keeps_it(tmp_path):
    out = tmp_path / "torn.h5"
    lease_path(out).write_text("{")  # torn by a crash mid-write: judged by its mtime
    with pytest.raises(LeaseHeld, match="an unreadable lease"):
        Lease(out, "run", timeout_s=60).acquire()
    old = time.time() - 120
    os.utime(lease_path(out), (old, old))
    lease = Lease(out, "run", timeout_s=60).acquire()
    first = read_holder(lease_path(out)).heartbeat_unix
    time.sleep(0.01)
    lease.refresh()
    assert read_holder(lease_path(out)).heartbeat_unix > first
    other = Lease(out, "resume", timeout_s=60)  # another job takes it over: this one notices
    _lease_file(out, "node-elsewhere", 1, 0)
    lease.refresh()
    assert lease.lost and "taken by another job" in lease.lost
    lease.release()  # not ours any more: left in place
    assert read_holder(lease_path(out)).host == "node-elsewhere"
    del other


def test_a_job_refused_at_start_releases_the_lease(tmp_path):
    """Refused after the lease was taken (preflight): no lease and no folder left. (A failed
    run: test_leftovers.py; an interrupted one: the live-run test above; a completed one:
    every test here.)"""
    bad = tmp_path / "new" / "bad.h5"
    res = run_job(N, "run", str(TINY), f"output={bad}", "model.kind=no_such_family",
                  timeout=60)
    assert res.returncode == 2 and "model.kind" in res.stderr
    assert not bad.parent.exists()  # the folder the lease made is removed again


def test_a_requeued_slurm_job_takes_over_its_own_lease(tmp_path, monkeypatch):
    """A job SLURM killed at walltime and requeued on another node: the same SLURM_JOB_ID
    with a higher SLURM_RESTART_COUNT means the old run has ended, heartbeat fresh or not;
    another job of the same allocation (same count) is refused."""
    out = tmp_path / "requeued.h5"
    now = time.time()
    lease_path(out).write_text(json.dumps({
        "host": "node-elsewhere", "pid": 4242, "writer": "node-elsewhere:4242:1",
        "command": "run", "job": "e" * 32, "started_unix": now - 60, "heartbeat_unix": now,
        "slurm": "777:0"}))
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(LeaseHeld):
        Lease(out, "resume", timeout_s=60).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lease = Lease(out, "resume", timeout_s=60).acquire()
    assert lease.takeover and "pid 4242 on node-elsewhere" in lease.takeover
    assert read_holder(lease_path(out)).slurm == "777:1"
    lease.release()
