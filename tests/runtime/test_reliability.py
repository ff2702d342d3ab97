"""Fault injection under the real ``mpiexec``: what a cluster does to a run (docs/errors.md,
"Reliability"). Readers that hold the run file open to the end, every stop signal, SIGKILL and
``fedkd-mpi repair``, a full file system (a small tmpfs, where this machine lets the test
mount one), paths that cannot be written, and checkpoints that are not what was written.

Every case checks the promise: bad input or a bad environment is one line and exit 2 before
any rank trains (nothing written, an old file kept); a run that cannot go on leaves a truthful
file (status and cause), keeps every completed round and leaves no partial files; a stop
signal checkpoints at the round boundary and exits 3 without a traceback from any rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedkd_mpi.cli import main
from fedkd_mpi.storage.disk import StorageError
from fedkd_mpi.storage.h5 import RunWriter, open_live, run_state

from ..conftest import FEDKD, MPIEXEC, ROOT, TINY, run_job, wait_for_output

N = 2  # server + one client rank hosting the 3 clients: the cheapest real job


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _ours(stderr: str) -> list[str]:
    """fedkd-mpi's own stderr lines (MPICH adds an 'Abort(1) ...' line when a job aborts, and
    its mpiexec may announce a forwarded Ctrl-C)."""
    return [ln for ln in _lines(stderr) if not ln.startswith(("Abort(", "[mpiexec@"))]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _status(path: Path) -> tuple[str, str, str, int]:
    """(attr status, run/status, error, rounds) read by a plain (non-SWMR) h5py reader."""
    with h5py.File(path, "r") as f:
        return (f.attrs["status"], f["run/status"][()].decode(), run_state(f)["error"],
                len(f["rounds/round"]))


class Job:
    """``mpiexec -n N fedkd-mpi run TINY ...`` in the background, output in files."""

    def __init__(self, tmp: Path, *args: str, n: int = N, env: dict | None = None) -> None:
        self.out, self.err = tmp / f"job{id(self)}.out", tmp / f"job{id(self)}.err"
        full = {**os.environ, "OMP_NUM_THREADS": "1", "MPIEXEC_TIMEOUT": "200", **(env or {})}
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen([str(MPIEXEC), "-n", str(n), str(FEDKD), "run",
                                          str(TINY), *args], cwd=ROOT, env=full, stdout=o,
                                         stderr=e, start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(self, text: str, timeout: float = 150) -> None:
        wait_for_output(self, text, timeout)

    def ranks(self) -> list[int]:
        """pids of the fedkd-mpi ranks (python processes under mpiexec)."""
        return [p for p in _descendants(self.proc.pid) if b"fedkd-mpi" in _cmdline(p)
                and b"python" in _cmdline(p)]

    def wait(self, timeout: float = 200) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to every process of the job; returns once they are all dead."""
        pids = [*_descendants(self.proc.pid), self.proc.pid]
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        end = time.monotonic() + 30
        while any(_state(p) not in ("", "Z", "X") for p in pids):
            assert time.monotonic() < end, "SIGKILLed processes still alive"
            time.sleep(0.02)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str:
    """The process state letter from /proc ('' when the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (SigCgt in /proc/<pid>/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _wait_file(path: Path, timeout: float = 150) -> h5py.File:
    """Open the run file as docs/hdf5.md shows, as soon as it exists."""
    end = time.monotonic() + timeout
    while True:
        try:
            return h5py.File(path, "r", libver="latest", swmr=True)
        except (OSError, FileNotFoundError):
            assert time.monotonic() < end, f"{path} never appeared"
            time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# readers that hold the file to the end
# ---------------------------------------------------------------------------------------
def test_readers_holding_the_file_cannot_stop_the_end(tmp_path):
    """An h5py reader keeps the file open from before round 1 to after the end, and
    ``report --watch`` polls it: the run completes (status completed, exit 0, summary); a
    checkpoint left by the file it replaced is removed when the new file is set up."""
    out = tmp_path / "held.h5"
    out.write_bytes(b"an older run")
    stale = tmp_path / "held.h5.ckpt"
    (stale / "round_000001").mkdir(parents=True)
    (stale / "manifest.json").write_text('{"dir": "round_000001", "round": 1}')
    job = Job(tmp_path, f"output={out}", "train.rounds=4", "--overwrite")
    reader = _wait_file(out)
    watch = subprocess.Popen([str(FEDKD), "report", "--watch", "0.3", "--no-figures", str(out)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        rc = job.wait()
        wout, werr = watch.communicate(timeout=120)
    finally:
        watch.kill()
    assert rc == 0, job.stderr
    assert "reduction vs FedAvg on the mentor" in job.stdout and not job.stderr.strip()
    d = reader["run/status"]
    d.refresh()
    assert d[()] == b"completed"  # the live reader sees the final status too
    reader.close()
    assert _status(out)[:2] == ("completed", "completed") and _status(out)[3] == 4
    assert watch.returncode == 0 and werr == ""
    assert re.findall(r"^status\s+(.*)$", wout, flags=re.M)[-1] == "completed"
    assert not stale.exists()


# ---------------------------------------------------------------------------------------
# stop signals
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, target, times", [
    ("SIGINT", "mpiexec", 1),  # Ctrl-C in the terminal
    ("SIGTERM", "mpiexec", 2),  # a scheduler, then an impatient user
    ("SIGHUP", "ranks", 1),  # a closed session reaching the ranks
])
def test_stop_signals_checkpoint_and_exit_3(tmp_path, sig, target, times):
    """Every stop request, with a reader holding the file: checkpoint at the round boundary,
    status interrupted, exit 3, one line from fedkd-mpi, no traceback from any rank."""
    out = tmp_path / "sig.h5"
    job = Job(tmp_path, f"output={out}", "train.rounds=40")
    reader = _wait_file(out)
    job.wait_for("round 1/")
    for _ in range(times):
        for pid in ([job.proc.pid] if target == "mpiexec" else job.ranks()):
            os.kill(pid, getattr(signal, sig))
        time.sleep(0.3)
    rc = job.wait()
    reader.close()
    assert rc == 3, job.stdout + job.stderr
    lines = _ours(job.stderr)
    assert lines == [f"fedkd-mpi: {sig} received: stopping at the next round boundary "
                     "(checkpoint, status interrupted, exit status 3); SIGKILL stops at once"]
    assert f"stopped by {sig} after round" in job.stdout
    attr, status, _, rounds = _status(out)
    assert attr == status == "interrupted" and 1 <= rounds < 40
    man = json.loads((tmp_path / "sig.h5.ckpt" / "manifest.json").read_text())
    assert man["round"] == rounds and len(man["files"]) == 3 + 1 + 2  # clients, server, ranks


def test_signal_during_start_up_writes_nothing(tmp_path):
    """SIGTERM while the ranks load data and build models: exit 3, nothing written, an old
    file given with --overwrite kept."""
    out = tmp_path / "early.h5"
    out.write_bytes(b"last week's results")
    job = Job(tmp_path, f"output={out}", "--overwrite")
    end = time.monotonic() + 60
    while len(job.ranks()) < N or not all(_catches(p, signal.SIGTERM) for p in job.ranks()):
        assert time.monotonic() < end and job.proc.poll() is None, job.stderr
        time.sleep(0.02)
    os.kill(job.proc.pid, signal.SIGTERM)  # the ranks are importing torch or validating
    assert job.wait() == 3, job.stdout + job.stderr
    assert "Traceback" not in job.stderr
    assert "stopped by SIGTERM during start-up, before the first round; nothing was written" \
        in job.stdout
    assert out.read_bytes() == b"last week's results"
    assert not (tmp_path / "early.h5.ckpt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".early.h5")]


# ---------------------------------------------------------------------------------------
# SIGKILL: recognised as killed, repaired
# ---------------------------------------------------------------------------------------
def test_killed_run_is_recognised_and_repaired(tmp_path, capsys):
    out, pidfile = tmp_path / "killed.h5", tmp_path / "rank1.pid"
    job = Job(tmp_path, f"output={out}", "train.rounds=5",
              env={"FEDKD_MPI_FAULT": "1:3:hang", "FEDKD_MPI_FAULT_PIDFILE": str(pidfile)})
    try:
        end = time.monotonic() + 150
        while not pidfile.exists():
            assert job.proc.poll() is None and time.monotonic() < end, job.stderr
            time.sleep(0.1)
        assert main(["repair", str(out)]) == 2  # the writer is alive: refused by its lease
        err = capsys.readouterr().err
        assert err.startswith(f"fedkd-mpi repair: 'output' {out} is in use by another job: run "
                              "by pid "), err
        assert main(["report", "--no-figures", str(out)]) == 0
        assert "still running (pid" in capsys.readouterr().out
    finally:
        job.kill()  # SIGKILL to every process of the job
    assert main(["report", "--no-figures", str(out)]) == 0
    rep = capsys.readouterr().out
    assert "killed: 2 of 5 rounds kept; the writer (pid" in rep and "fedkd-mpi repair" in rep
    with pytest.raises(OSError, match="h5clear"):
        h5py.File(out, "r")  # what HDF5 says until the file is repaired
    assert main(["repair", str(out)]) == 0
    assert "2 complete rounds kept" in capsys.readouterr().out
    attr, status, error, rounds = _status(out)  # a plain reader now
    assert attr == status == "failed" and rounds == 2
    assert error.startswith("the run ended without closing its file after 2 rounds")
    with h5py.File(out, "r") as f:
        assert np.isfinite(f["clients/mentee_metric"][:]).all()
    assert main(["repair", str(out)]) == 0
    assert "nothing to repair" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# a full file system (a small tmpfs)
# ---------------------------------------------------------------------------------------


def test_no_space_at_start_is_one_line_and_keeps_the_old_file(tmp_path, small_fs):
    fs = small_fs("200k")
    out = fs / "run.h5"
    out.write_bytes(b"x" * 50_000)  # the previous run, given with --overwrite
    res = run_job(N, "run", str(TINY), f"output={out}", "--overwrite", timeout=120)
    assert res.returncode == 2 and "round 1/" not in res.stdout
    (line,) = _lines(res.stderr)
    assert line.startswith(f"config error: 'output' {out}: no space left on device for the "
                           "run file (")
    assert out.read_bytes() == b"x" * 50_000
    assert sorted(p.name for p in fs.iterdir()) == ["run.h5"]


def test_no_space_after_round_1(tmp_path, small_fs):
    """The file system fills up (another job) while the run is going: one line naming the
    file, status failed with that cause, the completed rounds readable by a plain reader,
    no temporary file left."""
    fs = small_fs("1m")
    out = fs / "run.h5"
    job = Job(tmp_path, f"output={out}", "train.rounds=30")
    job.wait_for("round 1/")
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    (fs / "filler").write_bytes(b"\0" * max(0, free - 60_000))
    rc = job.wait()
    assert rc != 0
    (line,) = _ours(job.stderr)
    assert line.startswith(f"fedkd-mpi: rank 0: no space left on device for the run file {out} "
                           f"(") and line.endswith("; completed rounds are kept, status = failed")
    assert "Traceback" not in job.stderr
    attr, status, error, rounds = _status(out)
    assert attr == status == "failed" and rounds >= 1
    assert error.startswith(f"no space left on device for the run file {out}")
    assert sorted(p.name for p in fs.iterdir()) == ["filler", "run.h5"]


def test_full_checkpoint_disk(tmp_path, small_fs):
    """The checkpoint directory's file system is too small: one line naming the checkpoint
    file, the run file says failed with that cause, its rounds are kept, no partial
    checkpoint is left."""
    ck = small_fs("2500k") / "ckpt"  # one checkpoint fits (validate demands it), two do not
    out = tmp_path / "run.h5"
    res = run_job(3, "run", str(TINY), f"output={out}", "train.rounds=3",
                  "runtime.checkpoint_every=1", f"runtime.checkpoint_dir={ck}", timeout=150)
    assert res.returncode != 0
    (line,) = _ours(res.stderr)  # rank 0's line, whichever rank ran out of space first
    assert line.startswith("fedkd-mpi: rank 0: ") and "Traceback" not in res.stderr
    assert "no space left on device for a checkpoint file " + str(ck) in line
    attr, status, error, rounds = _status(out)
    assert attr == status == "failed" and rounds == 2
    assert "no space left on device for a checkpoint file" in error
    assert sorted(p.name for p in ck.iterdir()) == ["manifest.json", "round_000001"]


# ---------------------------------------------------------------------------------------
# every written path is checked before any rank trains
# ---------------------------------------------------------------------------------------
def test_written_paths_checked_before_training(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    cases = [
        (f"runtime.checkpoint_dir={afile}",
         f"config error: 'runtime.checkpoint_dir' ({afile}) is a file; it must be a directory"),
        ("runtime.checkpoint_dir=/sys/fedkd-ckpt",
         "config error: 'runtime.checkpoint_dir' directory /sys is not writable ("),
        (f"runtime.tensorboard={afile}/tb",
         f"config error: 'runtime.tensorboard' ({afile}/tb) has a file, {afile}, in its "
         "path; it must be a directory"),
    ]
    for override, want in cases:  # fedkd-mpi validate checks them too, without MPI
        assert main(["validate", str(TINY), f"output={tmp_path / 'v.h5'}", override]) == 2
        assert capsys.readouterr().err.startswith(want)
    assert main(["validate", str(TINY), f"output={tmp_path / 'v.h5'}",  # this host's spill
                 "runtime.resident_clients=1", f"runtime.spill_dir={afile}"]) == 2
    assert capsys.readouterr().err == (f"config error: 'runtime.spill_dir' ({afile}) is a file; "
                                       "it must be a directory (on this host)\n")
    out = tmp_path / "old.h5"
    out.write_bytes(b"last week's results")
    for override, want in [*cases[:1], (
            f"runtime.spill_dir={afile}",  # node-local: checked by every client rank
            f"config error: 'runtime.spill_dir' ({afile}) is a file; it must be a directory")]:
        res = run_job(N, "run", str(TINY), f"output={out}", override, "--overwrite",
                      "runtime.resident_clients=1", timeout=120)
        assert res.returncode == 2 and "round 1/" not in res.stdout
        (line,) = _lines(res.stderr)
        assert line.startswith(want)
        assert out.read_bytes() == b"last week's results" and afile.read_text() == "keep"


# ---------------------------------------------------------------------------------------
# resume: only what was written, clearly nothing when complete
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A 2-round run stopped by SIGUSR1 after round 1 (checkpoint with checksums)."""
    out = tmp_path_factory.mktemp("stopped") / "run.h5"
    res = run_job(N, "run", str(TINY), f"output={out}", "train.rounds=2",
                  env={"FEDKD_MPI_SIGNAL": "1:1"}, timeout=150)
    assert res.returncode == 3, res.stderr
    return out


def _copy(src: Path, dst_dir: Path) -> Path:
    out = dst_dir / src.name
    shutil.copy(src, out)
    shutil.copytree(f"{src}.ckpt", f"{out}.ckpt")
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["checksums", "no-checksums"])
def test_a_shard_of_another_client_is_refused(tmp_path, interrupted, legacy):
    """client_0000001.pt copied over client_0000002.pt: refused in one line, file untouched
    (by its checksum); a manifest stripped of its file checksums (as written before them) is
    refused as edited: it no longer matches its own checksum."""
    out = _copy(interrupted, tmp_path)
    ck = Path(f"{out}.ckpt")
    d = ck / "round_000001"
    shutil.copy(d / "client_0000001.pt", d / "client_0000002.pt")
    if legacy:
        man = json.loads((ck / "manifest.json").read_text())
        del man["files"]
        (ck / "manifest.json").write_text(json.dumps(man))
    before = _digest(out)
    res = run_job(N, "run", str(TINY), f"output={out}", "train.rounds=2", "--resume",
                  timeout=120)
    assert res.returncode == 2
    (line,) = _lines(res.stderr)
    if legacy:
        assert line.startswith(f"resume error: the checkpoint manifest {ck / 'manifest.json'} "
                               "does not match its own checksum"), line
    else:
        assert line == (f"resume error: checkpoint file {d / 'client_0000002.pt'} is corrupt "
                        "(its SHA-256 differs from the one in the manifest); restore it or "
                        "start a new run")
    assert _digest(out) == before


def test_resume_of_a_complete_run_does_nothing(tmp_path, interrupted):
    """Resumed to the end, the run removes its checkpoint; resuming it again is one line and
    exit 0 with the file untouched, and the SLURM script does not even start mpiexec."""
    out = _copy(interrupted, tmp_path)
    res = run_job(N, "run", str(TINY), f"output={out}", "train.rounds=2", "--resume",
                  timeout=150)
    assert res.returncode == 0, res.stderr
    assert not Path(f"{out}.ckpt").exists()
    before = _digest(out)
    res = run_job(N, "run", str(TINY), f"output={out}", "train.rounds=2", "--resume",
                  timeout=120)
    assert res.returncode == 0 and res.stderr == ""
    assert _lines(res.stdout) == [f"fedkd-mpi: nothing to resume: {out} is complete (2 of 2 "
                                  "rounds)"]
    res = run_job(N, "run", str(TINY), f"output={out}", "train.rounds=3", "--resume",
                  timeout=120)
    assert res.returncode == 2 and "a finished run is not extended" in res.stderr
    env = {**os.environ, "SLURM_NTASKS": "2"}
    res = subprocess.run(["bash", str(ROOT / "jobs" / "slurm_cpu.sh"), str(TINY),
                          f"output={out}", "train.rounds=2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "complete; nothing to do" in res.stdout
    assert _digest(out) == before


# ---------------------------------------------------------------------------------------
# the writer and checkpoint files in-process (no MPI): the mechanisms behind the jobs above
# ---------------------------------------------------------------------------------------
def _writer(path: Path) -> RunWriter:
    return RunWriter(path, {"config": "seed: 0\n"}, 2, 2, ["w"], np.array([[2, 2]]))


def _append(w: RunWriter) -> None:
    from fedkd_mpi.storage.schema import CLIENT_FIELDS, ROUND_FIELDS, TIMING_PHASES

    w.append(dict.fromkeys(ROUND_FIELDS, 1), {k: np.ones(2) for k in CLIENT_FIELDS},
             {k: np.ones(2) for k in TIMING_PHASES}, np.ones(2), np.ones((2, 1)),
             np.ones(1), np.ones(2, np.int64))


def test_writer_ends_in_place_whatever_readers_hold(tmp_path, monkeypatch):
    path = tmp_path / "w.h5"
    w = _writer(path)
    reader = open_live(path)  # as docs/hdf5.md shows; plain readers are locked out by SWMR
    _append(w)
    w.close("completed")  # the old writer reopened the file here: BlockingIOError
    assert run_state(reader)["status"] == "completed"
    reader.close()
    assert _status(path) == ("completed", "completed", "", 1)
    w = _writer(path)  # a full disk before an append: a one-line StorageError, no write
    _append(w)
    monkeypatch.setattr("fedkd_mpi.storage.h5.free_bytes", lambda _p: 1000)
    with pytest.raises(StorageError, match=r"^no space left on device for the run file "):
        _append(w)
    w.close("failed", "no space", strict=False)
    assert _status(path) == ("failed", "failed", "no space", 1)
    assert [p.name for p in tmp_path.iterdir()] == ["w.h5"]


def test_checkpoint_bytes_are_verified_when_loaded(tmp_path):
    """What a resume loads is the bytes it hashed: a change after the launch check is caught
    at load time, not loaded."""
    from fedkd_mpi.runtime.residency import CheckpointError, atomic_save, load_tree

    f = tmp_path / "x.pt"
    digest, size = atomic_save({"cid": 3}, f, durable=True)
    assert size == f.stat().st_size and load_tree(f, sha256=digest) == {"cid": 3}
    data = bytearray(f.read_bytes())
    data[-30] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_tree(f, sha256=digest)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temporary file left
