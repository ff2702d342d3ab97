"""Shared helpers: the project's own launcher, a tiny config, run-a-job-under-mpiexec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"  # the launcher of the MPI that mpi4py loaded (never a system one)
FEDKD = BIN / "fedkd-mpi"
TINY = ROOT / "tests" / "tiny.yaml"


def run_job(n: int, *args: str, timeout: float = 240, env: dict | None = None,
            launcher: bool = True) -> subprocess.CompletedProcess:
    """``mpiexec -n N fedkd-mpi ARGS`` as a user would type it; output captured."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MPIEXEC_TIMEOUT": str(int(timeout)),
                **(env or {})}
    cmd = ([str(MPIEXEC), "-n", str(n)] if launcher else []) + [str(FEDKD), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30,
                          env=full_env, cwd=ROOT)


@pytest.fixture
def tiny_run(tmp_path):
    """Run the tiny config on N ranks into tmp_path; returns (result, h5 path)."""

    def _run(n: int = 3, *overrides: str, name: str = "run.h5", **kw):
        out = tmp_path / name
        res = run_job(n, "run", str(TINY), f"output={out}", *overrides, **kw)
        return res, out

    return _run


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size)``: a fresh tmpfs of that size (skips where mounting is not allowed)."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("the full-disk cases mount a small tmpfs, which needs root")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                             capture_output=True, text=True)
        if res.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()})")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def wait_for_output(job, text: str, timeout: float = 150) -> None:
    """Until ``text`` is in ``job.stdout`` (a background job with ``proc``, ``stdout`` and
    ``stderr``); fails when the job ends first or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while text not in job.stdout:
        assert job.proc.poll() is None, f"job ended first\n{job.stdout}\n{job.stderr}"
        assert time.monotonic() < end, f"no {text!r} within {timeout} s"
        time.sleep(0.05)
