"""Fixtures: the fake nodes (made once per session), a shared directory per test, jobs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import FEDKD, MPIEXEC, ROOT, TINY, wait_for_output
from .fakenodes import FakeNodes, NodesUnavailable

NODES = 3
#: every rank's environment: one thread, spill files in the node's own /tmp
ENV = {"OMP_NUM_THREADS": "1", "TMPDIR": "/tmp"}


@pytest.fixture(scope="session")
def nodes() -> Iterator[FakeNodes]:
    """node0 ... node2; skipped (failed with FEDKD_REQUIRE_NODES=1) where they cannot be
    made. Removed at the end of the session, whatever the tests did."""
    fake, why = FakeNodes(NODES), ""
    try:
        fake.start()
    except NodesUnavailable as exc:
        why = str(exc)
    if why and os.environ.get("FEDKD_REQUIRE_NODES") == "1":
        pytest.fail(f"FEDKD_REQUIRE_NODES=1 but {why}", pytrace=False)
    if why:
        pytest.skip(why)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def shared(nodes: FakeNodes, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory every node sees (pytest's tmp_path is under the node-private /tmp)."""
    d = nodes.base / "work" / request.node.name.replace("/", "_")
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Job:
    """``mpiexec ... fedkd-mpi run TINY ARGS`` started in node0, in the background; output in
    files of the shared directory."""

    def __init__(self, nodes: FakeNodes, hosts: dict[str, int], out: Path, *args: str,
                 timeout: int = 200, env: dict[str, str] | None = None) -> None:
        n = sum(hosts.values())
        self.nodes, self.log = nodes, out.with_suffix(f".{time.monotonic_ns()}")
        self.left: list[int] = []
        argv = nodes.mpiexec(MPIEXEC, hosts, n, str(FEDKD), "run", str(TINY),
                             f"output={out}", *args)
        full = {**os.environ, **ENV, "MPIEXEC_TIMEOUT": str(timeout), **(env or {})}
        with open(f"{self.log}.out", "w") as o, open(f"{self.log}.err", "w") as e:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=full, stdout=o, stderr=e)

    @property
    def stdout(self) -> str:
        return Path(f"{self.log}.out").read_text()

    @property
    def stderr(self) -> str:
        return Path(f"{self.log}.err").read_text()

    def wait_for(self, text: str, timeout: float = 150) -> None:
        wait_for_output(self, text, timeout)

    def wait(self, timeout: float = 230) -> int:
        """The exit status of mpiexec. Afterwards no process of the job is left: those still
        there 30 s after mpiexec ended are listed in :attr:`left`, then SIGKILLed."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            self.left = self.nodes.wait_gone()
            for pid in self.left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def run(nodes: FakeNodes, hosts: dict[str, int], out: Path, *args: str,
        **kw: object) -> Job:
    """Run a job to its end (see :class:`Job`)."""
    job = Job(nodes, hosts, out, *args, **kw)  # type: ignore[arg-type]
    job.wait()
    return job
