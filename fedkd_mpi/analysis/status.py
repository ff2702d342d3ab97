"""A run's status in words: completed, failed with its error, interrupted (resumable), or,
for a file still marked running, alive or killed as its writer's pid or heartbeat tells."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedkd_mpi.storage.liveness import WriterVerdict


def status_note(path: Path, status: str, rounds: pd.DataFrame, planned: int | None,
                 verdict: WriterVerdict | None, error: str | None = None) -> tuple[str, bool]:
    done = len(rounds)
    if status == "completed":
        if planned is not None and done < planned:
            return f"completed after {done} of {planned} rounds", True
        return "completed", True
    if status == "failed":
        why = f": {error}" if error else ""
        return f"failed after {done} completed rounds{why}", False
    if status == "interrupted":
        return f"interrupted (stopped on a signal after {done} rounds; resumable)", False
    if status != "running" or verdict is None:
        return f"{status} (unknown status)", False
    # 'running': the writer replaces it when it ends, so a killed job keeps it. On the
    # writer's host its pid tells; elsewhere the heartbeat's age against the round time.
    v = verdict
    of = f"{done} of {planned or '?'} rounds"
    age = f"{v.age_s:.0f} s ago" if v.age_s is not None else "at an unknown time"
    who = f"pid {v.pid} on {v.host}" if v.pid is not None else "the writer"
    repair = f"; 'fedkd-mpi repair {path}' makes it readable by any HDF5 reader"
    if v.alive is True:
        return (f"running: {of}; still running ({who} is alive, last {v.source} {age})"), False
    if v.alive is False:
        return (f"killed: {of} kept; the writer ({who}) is gone, last {v.source} {age}"
                f"{repair}"), False
    if v.likely_alive:
        return (f"running: {of}; probably still running (last {v.source} {age}; no sign of "
                f"life for more than {v.limit_s:.0f} s would mean killed)"), False
    return (f"probably killed: {of} kept; no sign of life for {v.age_s:.0f} s (last "
            f"{v.source}; rounds take at most {v.limit_s / 5:.0f} s, the limit is "
            f"{v.limit_s:.0f} s){repair}"), False
