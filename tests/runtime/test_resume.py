"""Kill-and-resume and signal-and-resume under the real mpiexec: the resumed run file is
identical, dataset by dataset, to an uninterrupted run (timings aside)."""

from __future__ import annotations

import json
import os
import subprocess

import h5py
import numpy as np
import pytest

from fedkd_mpi.storage.h5 import open_live

from ..conftest import ROOT, TINY, run_job

#: sampling and spilling on, so that both are part of what must survive a resume
COMMON = ("data.num_clients=4", "train.rounds=4", "train.sample_fraction=0.75",
          "runtime.resident_clients=1")
#: wall-clock datasets (the only ones allowed to differ)
TIMING = ("timing/", "memory/", "run/heartbeat_unix", "rounds/wall_time_s",
          "rounds/codec_time_s", "rounds/comm_time_s", "rounds/server_time_s",
          "rounds/train_time_s", "clients/train_time_s", "clients/encode_time_s")


def _ok(res, code=0):
    assert res.returncode == code, (f"rc={res.returncode}\nSTDOUT:\n{res.stdout}\n"
                                    f"STDERR:\n{res.stderr}")


def _datasets(path):
    out = {}

    def _take(name, obj):  # returns None: visititems stops at the first non-None
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(_take)
    return out


def assert_same_science(a_path, b_path, skip: tuple[str, ...] = ()):
    """Every dataset of two run files bitwise equal, except wall-clock ones and ``skip``."""
    a, b = _datasets(a_path), _datasets(b_path)
    assert a.keys() == b.keys()
    compared = 0
    for name, x in a.items():
        if name.startswith(TIMING + skip):
            continue
        y = b[name]
        assert x.shape == y.shape, name
        eq = (np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f"
              else np.array_equal(x, y))
        assert eq, f"{name} differs"
        compared += 1
    assert compared >= 20


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    _ok(run_job(3, "run", str(TINY), f"output={out}", *COMMON))
    return out


def test_kill_mid_run_then_resume_is_identical(reference, tmp_path):
    out = tmp_path / "killed.h5"
    res = run_job(3, "run", str(TINY), f"output={out}", *COMMON, "runtime.checkpoint_every=2",
                  env={"FEDKD_MPI_FAULT": "2:4"}, timeout=120)
    assert res.returncode != 0 and "injected fault" in res.stderr
    with open_live(out) as f:
        assert list(f["rounds/round"][:]) == [1, 2, 3]  # round 3 written, not checkpointed
    man = json.loads((tmp_path / "killed.h5.ckpt" / "manifest.json").read_text())
    assert man["round"] == 2
    res = run_job(3, "run", str(TINY), f"output={out}", *COMMON, "runtime.checkpoint_every=2",
                  "--resume")
    _ok(res)
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        assert list(f.attrs["resumed_from_round"]) == [2]
        assert list(f["rounds/round"][:]) == [1, 2, 3, 4]
        assert f["clients/participated"][:].sum() == 4 * 3
    assert_same_science(reference, out)


def _batch(*args, env=None):
    """jobs/slurm_cpu.sh outside SLURM (3 ranks): its resume detection and exit status."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_NTASKS": "3", **(env or {})}
    return subprocess.run(["bash", str(ROOT / "jobs" / "slurm_cpu.sh"), *args], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=300)


def test_signal_checkpoints_exits_3_and_resumes_identically(reference, tmp_path):
    out = tmp_path / "sig.h5"
    res = _batch(str(TINY), f"output={out}", *COMMON, env={"FEDKD_MPI_SIGNAL": "1:2"})
    _ok(res, 3)
    assert "new run" in res.stdout and "--resume" in res.stdout
    assert "exit status 3" in res.stdout
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "interrupted"
        assert list(f["rounds/round"][:]) == [1, 2]
    ck = tmp_path / "sig.h5.ckpt"
    assert json.loads((ck / "manifest.json").read_text())["round"] == 2
    assert len(list((ck / "round_000002").glob("client_*.pt"))) == 4
    # a different config cannot resume from it: one line, exit 2, nothing touched
    before = out.read_bytes()
    res = run_job(3, "run", str(TINY), f"output={out}", *COMMON, "train.lr_mentor=0.5",
                  "--resume")
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "train.lr_mentor" in lines[0]
    assert out.read_bytes() == before
    res = _batch(str(TINY), f"output={out}", *COMMON)  # the script sees the checkpoint
    _ok(res)
    assert "resume run" in res.stdout
    assert_same_science(reference, out)


def test_resume_without_checkpoint_is_one_line(tmp_path):
    res = run_job(3, "run", str(TINY), f"output={tmp_path / 'none.h5'}", "--resume")
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1
