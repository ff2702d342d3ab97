"""After any failure, nothing the run created in temporary places stays behind: spill
directories of every rank (also of ranks that MPI_Abort killed), the lease, temporary files
beside the output and in the checkpoint directory.

Before the spill watcher (fedkd_mpi/storage/janitor.py), a failure on rank 1 left rank 2's
spill directory behind in $TMPDIR (it was killed by MPI_Abort before its own clean-up); a
failure on rank 0 leaves both client ranks' behind the same way."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import pytest

from fedkd_mpi.storage.lease import lease_path

from ..conftest import TINY, run_job


def _gone(spill: Path, timeout: float = 5.0) -> list[Path]:
    """What is left in ``spill`` once the watchers had ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while list(spill.iterdir()) and time.monotonic() < end:
        time.sleep(0.1)
    return list(spill.iterdir())


@pytest.mark.parametrize("fault", ["1:2", "0:2"], ids=["rank1", "rank0"])
def test_a_failure_leaves_no_temporary_files(tmp_path, fault):
    spill = tmp_path / "spill"
    spill.mkdir()
    out = tmp_path / "out" / "run.h5"
    res = run_job(3, "run", str(TINY), f"output={out}", "data.num_clients=6",
                  "runtime.resident_clients=1", f"runtime.spill_dir={spill}",
                  "runtime.checkpoint_every=1", env={"FEDKD_MPI_FAULT": fault,
                                                     "FEDKD_MPI_ABORT_GRACE_S": "2"},
                  timeout=120)
    assert res.returncode != 0 and "injected fault" in res.stderr
    assert _gone(spill) == []
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "failed"
    assert not lease_path(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5", "run.h5.ckpt"]
    ck = Path(f"{out}.ckpt")  # the last complete checkpoint, nothing half-written
    assert sorted(p.name for p in ck.iterdir()) == ["manifest.json", "round_000001"]
