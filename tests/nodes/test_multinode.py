"""One job over several (fake) nodes: real mpiexec (Hydra, rsh launcher), real HDF5.

node0 holds the server, node1 and node2 two client ranks each (a hostfile with slots); the
run file and checkpoints live in a directory every node sees, spill files in each node's own
/tmp. What must hold: the results are bitwise those of one node, every rank knows its node,
a stop signal to mpiexec checkpoints every rank across the nodes and the run resumes to the
same file, and a rank killed on a remote node ends the whole job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from fedkd_mpi.analysis.reader import load

from ..conftest import MPIEXEC, ROOT
from .conftest import ENV, Job, run
from .fakenodes import FakeNodes

#: spilling (8 clients, one in memory per rank) and client sampling, 4 rounds
COMMON = ("data.num_clients=8", "train.rounds=4", "train.sample_count=5",
          "runtime.resident_clients=1")
#: the server alone on node0, two client ranks on node1 and on node2
SPREAD = {"node0": 1, "node1": 2, "node2": 2}
SPILL = "fedkd_mpi-spill-r*"
STOP_LINE = ("fedkd-mpi: SIGTERM received: stopping at the next round boundary (checkpoint, "
             "status interrupted, exit status 3); SIGKILL stops at once")


def _ok(job: Job, code: int = 0) -> None:
    rc = job.proc.returncode
    assert rc == code, f"rc={rc}\nSTDOUT:\n{job.stdout}\nSTDERR:\n{job.stderr}"
    assert not job.left, f"processes left on the nodes after mpiexec ended: {job.left}"
    assert "Traceback" not in job.stderr, job.stderr


def _identical(a: Path, b: Path, *extra: str) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "h5_identical.py"), *extra,
                          str(a), str(b)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def _spills(nodes: FakeNodes) -> dict[str, set[str]]:
    """Spill directories in each node's private /tmp, by node."""
    return {n: {p.name for p in nodes.path_on(n, "/tmp").glob(SPILL)} for n in nodes.names}


@pytest.fixture(scope="module")
def area(nodes: FakeNodes) -> Path:
    d = nodes.base / "work" / "module"
    d.mkdir(parents=True)
    return d


@pytest.fixture(scope="module")
def reference(nodes: FakeNodes, area: Path) -> Path:
    """The uninterrupted run on one node (the same 5 ranks, all on node0)."""
    out = area / "one-node.h5"
    _ok(run(nodes, {"node0": 5}, out, *COMMON))
    return out


@pytest.fixture(scope="module")
def spread(nodes: FakeNodes, area: Path) -> tuple[Path, dict[str, set[str]]]:
    """The same run on 5 ranks over 3 nodes; (run file, spill directories seen per node)."""
    out = area / "three-nodes.h5"
    job = Job(nodes, SPREAD, out, *COMMON)
    seen: dict[str, set[str]] = {n: set() for n in nodes.names}
    while job.proc.poll() is None:
        for n, names in _spills(nodes).items():
            seen[n] |= names
        time.sleep(0.05)
    job.wait()
    _ok(job)
    return out, seen


def test_three_nodes_are_bitwise_one_node_and_spill_locally(nodes, reference, spread):
    out, seen = spread
    _identical(reference, out)
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed" and len(f["rounds/round"]) == 4
        assert list(f.attrs["client_rank"]) == [1, 1, 2, 2, 3, 3, 4, 4]
        assert f["clients/participated"][:].sum() == 4 * 5
    # ranks 1, 2 on node1 and 3, 4 on node2 spilled, each into its own node's /tmp
    assert {n: sorted(s.split("-")[2] for s in names) for n, names in seen.items()} == {
        "node0": [], "node1": ["r1", "r2"], "node2": ["r3", "r4"]}
    assert _spills(nodes) == {n: set() for n in nodes.names}  # removed at the end
    assert not list(out.parent.glob(SPILL)) and not list(Path("/var/tmp").glob(SPILL))


def test_ranks_know_their_node(nodes, shared, spread):
    """The run file records each rank's fake host; the node-local split (MPI_COMM_TYPE_SHARED)
    gives the node-local client index that picks a GPU."""
    with h5py.File(spread[0], "r") as f:
        assert [str(d) for d in f.attrs["devices"]] == [
            "rank 0 on node0: cpu", "rank 1 on node1: cpu", "rank 2 on node1: cpu",
            "rank 3 on node2: cpu", "rank 4 on node2: cpu"]
    script = shared / "where.py"
    script.write_text(
        "import sys\n"
        "from mpi4py import MPI\n"
        "from fedkd_mpi.runtime.devices import choose_device, node_info\n"
        "r = MPI.COMM_WORLD.Get_rank()\n"
        "i = node_info(MPI.COMM_WORLD)\n"
        "row = [r, i.host, i.node_ranks, i.node_clients, i.client_index,\n"
        "       *[choose_device(r, i, g, 'auto', 'cpu', 1)[0] for g in (2, 1)],\n"
        "       choose_device(r, i, 1, 'auto', 'cpu', 1)[1] or '-']\n"
        "open(f'{sys.argv[1]}/rank{r}', 'w').write('|'.join(map(str, row)))\n")
    argv = nodes.mpiexec(MPIEXEC, {"node0": 2, "node1": 2, "node2": 1}, 5, sys.executable,
                         str(script), str(shared))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, **ENV, "MPIEXEC_TIMEOUT": "100"})
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [(shared / f"rank{r}").read_text().split("|") for r in range(5)]
    crowded = ("config error: 2 client ranks on node node1 but 1 GPU(s) and "
               "'runtime.ranks_per_gpu' is 1; start at most 1 client ranks per node or set "
               "runtime.ranks_per_gpu=2 (or runtime.device=cpu)")
    assert rows == [  # rank, host, ranks on the node, client ranks on it, index, GPUs 2 / 1
        ["0", "node0", "2", "1", "0", "cpu", "cpu", "-"],
        ["1", "node0", "2", "1", "0", "cuda:0", "cuda:0", "-"],
        ["2", "node1", "2", "2", "0", "cuda:0", "cpu", crowded],
        ["3", "node1", "2", "2", "1", "cuda:1", "cpu", crowded],
        ["4", "node2", "1", "1", "0", "cuda:0", "cuda:0", "-"]]


def test_sigterm_to_mpiexec_checkpoints_every_node_then_resumes(nodes, shared, reference):
    out = shared / "stopped.h5"
    job = Job(nodes, SPREAD, out, *COMMON)
    job.wait_for("round 1/")
    assert b"mpiexec" in Path(f"/proc/{job.proc.pid}/cmdline").read_bytes()
    job.proc.send_signal(signal.SIGTERM)  # mpiexec, in node0; Hydra forwards it to node1, 2
    job.wait()
    _ok(job, 3)
    assert [ln for ln in job.stderr.splitlines() if ln.startswith("fedkd-mpi")] == [STOP_LINE]
    assert "stopped by SIGTERM after round" in job.stdout and "Traceback" not in job.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == f["run/status"][()].decode() == "interrupted"
        rounds = len(f["rounds/round"])
    assert 1 <= rounds < 4
    man = json.loads((shared / "stopped.h5.ckpt" / "manifest.json").read_text())
    assert man["round"] == rounds and len(man["files"]) == 8 + 1 + 5  # clients, server, ranks
    assert _spills(nodes) == {n: set() for n in nodes.names}
    again = run(nodes, SPREAD, out, *COMMON, "--resume")
    _ok(again)
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        assert list(f.attrs["resumed_from_round"]) == [rounds]
    _identical(reference, out, "--new-attrs", "resumed_from_round")
    assert not (shared / "stopped.h5.ckpt").exists()


def test_rank_killed_on_a_remote_node_ends_the_job(nodes, shared):
    """SIGKILL to a client rank on node2: mpiexec on node0 ends every rank on every node
    within seconds; the completed rounds are readable, and the writer's node sees it gone."""
    out = shared / "killed.h5"
    job = Job(nodes, SPREAD, out, *COMMON[:1], "train.rounds=40", *COMMON[2:])  # not 4
    job.wait_for("round 1/")
    victims = nodes.ranks_on("node2")
    assert len(victims) == 2, (victims, job.stderr)
    t0 = time.monotonic()
    os.kill(victims[0], signal.SIGKILL)
    rc = job.wait(timeout=90)
    took = time.monotonic() - t0
    assert rc != 0 and took < 60, (rc, took, job.stderr)
    assert not job.left, f"processes left on the nodes: {job.left}"
    said = job.stdout + job.stderr  # Hydra names the node where the rank died
    assert "BAD TERMINATION" in said and "RUNNING AT node2" in said, said
    summary = load(out).summary  # from this machine (not the writer's host): by heartbeat
    assert summary.status == "running" and 1 <= summary.rounds_completed < 40
    rep = nodes.run_on("node0", [sys.executable, "-m", "fedkd_mpi", "report", "--no-figures",
                                 str(out)], cwd=ROOT)
    assert rep.returncode == 0, rep.stderr
    assert re.search(rf"killed: {summary.rounds_completed} of 40 rounds kept; the writer "
                     r"\(pid \d+ on node0\) is gone", rep.stdout), rep.stdout
    end = time.monotonic() + 5  # the killed ranks' spill watchers remove theirs
    while any(_spills(nodes).values()) and time.monotonic() < end:
        time.sleep(0.1)
    assert _spills(nodes) == {n: set() for n in nodes.names}
