"""Run pytest on every rank of an MPI job (``mpiexec -n N python tests/mpi_pytest.py ...``).

* refuses a false green: the launcher started N processes but mpi4py sees a world of 1;
* only rank 0 writes to the terminal (others to logs/pytest-mpi-rank<R>.log);
* a test failing on any rank aborts the whole job (no rank left waiting in a collective);
* fails when an MPI test was skipped or none ran.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mpi4py import MPI

comm = MPI.COMM_WORLD
started = int(os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or 0)
if started > 1 and comm.Get_size() != started:
    print(f"FALSE GREEN: launcher started {started} processes but MPI.COMM_WORLD.size is "
          f"{comm.Get_size()} (mpiexec of another MPI than mpi4py's?)", file=sys.stderr)
    sys.exit(3)

if comm.Get_rank() != 0:
    logs = Path("logs")
    logs.mkdir(exist_ok=True)
    fd = os.open(logs / f"pytest-mpi-rank{comm.Get_rank()}.log",
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


class Guard:
    """Abort on the first failure anywhere; count what ran."""

    passed = skipped = 0

    def pytest_runtest_logreport(self, report):
        if report.failed:
            sys.stderr.write(f"[rank {comm.Get_rank()}] FAILED {report.nodeid}\n"
                             f"{report.longreprtext}\n")
            sys.stderr.flush()
            comm.Abort(1)
        if report.when == "call" and report.passed:
            Guard.passed += 1
        if report.skipped:
            Guard.skipped += 1


guard = Guard()
rc = pytest.main(["--with-mpi", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[guard])
if rc == 0 and (Guard.skipped or not Guard.passed):
    print(f"MPI tests: {Guard.passed} passed, {Guard.skipped} skipped: refusing (all must run)",
          file=sys.stderr)
    rc = 4
rc = comm.allreduce(int(rc), op=MPI.MAX)
sys.exit(rc)
