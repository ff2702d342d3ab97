"""One owner per output and one checkpoint directory for all, across (fake) nodes.

Before the lease, a ``--resume`` of a live run's output with rank 0 on node1 (the live run's
rank 0 on node0) ran, failed on a checkpoint shard and left the live run's file ``failed``:
the writer's host:pid check cannot see a process on another host. Before the visibility
check, a node-local ``runtime.checkpoint_dir`` was accepted and interrupted cleanly, and only
``--resume`` said "no complete checkpoint", after the allocation was gone."""

from __future__ import annotations

import json
import signal

import h5py

from .conftest import Job, run
from .test_multinode import COMMON, SPREAD, _ok

#: the second job: its rank 0 on node1, clients on node2
OTHER = {"node1": 1, "node2": 2}


def test_a_job_from_another_node_cannot_take_a_live_output(nodes, shared):
    out = shared / "live.h5"
    live = Job(nodes, SPREAD, out, *COMMON[:1], "train.rounds=400", *COMMON[2:],
               "runtime.checkpoint_every=1")
    try:
        live.wait_for("round 2/")
        for extra in (("--resume",),):  # --overwrite: the same lease (test_lease.py)
            second = Job(nodes, OTHER, out, *COMMON[:1], "train.rounds=400", *COMMON[2:],
                         "runtime.checkpoint_every=1", *extra)
            # its own mpiexec only: Job.wait would also reap the live job's processes
            assert second.proc.wait(timeout=120) == 2, second.stderr
            (line,) = second.stderr.strip().splitlines()
            assert line.startswith(f"launch error: 'output' {out} is in use by another job: "
                                   "run by pid ") and " on node0 since " in line, line
            assert "round " not in second.stdout
        live.proc.send_signal(signal.SIGTERM)
        live.wait()
        _ok(live, 3)
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
            live.wait()
    with h5py.File(out, "r") as f:  # the live run ended as itself: interrupted, resumable
        assert f.attrs["status"] == "interrupted"
        done = len(f["rounds/round"])
    assert json.loads((shared / "live.h5.ckpt" / "manifest.json").read_text())["round"] == done
    assert not (shared / "live.h5.lock").exists()


def test_a_node_local_checkpoint_dir_is_refused_at_start(nodes, shared):
    out = shared / "local-ckpt.h5"
    job = run(nodes, SPREAD, out, *COMMON, "runtime.checkpoint_dir=/tmp/fedkd-ckpt")
    assert job.proc.returncode == 2, job.stderr
    (line,) = job.stderr.strip().splitlines()
    assert line == (
        "config error: 'runtime.checkpoint_dir' (/tmp/fedkd-ckpt) is not one directory shared "
        "by every rank: ranks 1, 2, 3, 4 on node1, node2 do not see what rank 0 on node0 wrote "
        "there (a node-local path?); give a directory on a file system that every node mounts, "
        "e.g. the default <output>.ckpt beside a shared output"), line
    assert "round " not in job.stdout
    assert not out.exists() and not (shared / "local-ckpt.h5.lock").exists()
    for n in nodes.names:  # the check leaves nothing behind, on any node
        assert not nodes.path_on(n, "/tmp/fedkd-ckpt").exists(), n
