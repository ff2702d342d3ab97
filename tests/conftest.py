"""Shared helpers: the project's own launcher, a tiny config, run-a-job-under-mpiexec."""

from __future__ import annotations

import os
import subprocess
import sys
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
