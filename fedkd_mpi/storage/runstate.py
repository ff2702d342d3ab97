"""What a run file says about its run, for every reader: status, error, heartbeat and writer
(``run_state``), the run's id and checkpoint record (``checkpoint_record``), and the bounded
open that never hangs on a damaged file (``open_live``, storage/reading.py). The writer's
identity is storage/owner.py's."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from fedkd_mpi.storage.owner import writer_id  # noqa: F401 (re-exported)
from fedkd_mpi.storage.schema import (
    RUN_CHECKPOINT_ROUND,
    RUN_CHECKPOINT_SHA256,
    RUN_ERROR,
    RUN_HEARTBEAT,
    RUN_STATUS,
)

#: statuses a run ends with (``running`` is replaced by one of them when the writer ends)
FINAL_STATUSES = ("completed", "failed", "interrupted")


def checkpoint_record(f: h5py.File) -> dict[str, object]:
    """The run's id and the checkpoint manifests its writer recorded (rounds, SHA-256s;
    empty lists for a file from before the record)."""
    rounds: list[int] = []
    digests: list[str] = []
    r, d = f.get(RUN_CHECKPOINT_ROUND), f.get(RUN_CHECKPOINT_SHA256)
    if isinstance(r, h5py.Dataset) and isinstance(d, h5py.Dataset):
        for ds in (r, d):
            try:
                ds.refresh()
            except Exception:  # not opened for SWMR reading
                pass
        rounds = [int(x) for x in r[()]]
        digests = [_text(x) for x in d[()]]
    return {"run_id": _text(f.attrs.get("run_id", "")) or None, "rounds": rounds,
            "sha256": digests}


def open_live(path: str | Path) -> h5py.File:
    """Open a run file for reading in bounded time, live or not (storage/reading.py)."""
    from fedkd_mpi.storage.reading import open_run
    return open_run(path)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return "" if value is None else str(value)


def run_state(f: h5py.File) -> dict[str, object]:
    """status, error, heartbeat (unix time or None) and writer of an open run file: from the
    ``run/`` datasets when present (format 3, refreshed for a live SWMR reader), else from the
    root attributes."""
    def read(name: str) -> object:
        d = f.get(name)
        if not isinstance(d, h5py.Dataset):
            return None
        try:
            d.refresh()
        except Exception:  # not opened for SWMR reading
            pass
        return d[()]

    status, error, beat = read(RUN_STATUS), read(RUN_ERROR), read(RUN_HEARTBEAT)
    attr_status = _text(f.attrs.get("status", "unknown"))
    attr_error = _text(f.attrs.get("error", ""))
    # the writer sets run/ first and the attrs right after, to the same values: a final
    # status in the attr that run/ lacks was set later (by a tool) and wins; 'running' in
    # the attr next to a final run/status means the writer stopped in between
    if status is None or (attr_status in FINAL_STATUSES and attr_status != _text(status)):
        status, error = attr_status, attr_error
    else:
        status, error = _text(status), _text(error) if error is not None else attr_error
    return {
        "status": status,
        "error": error,
        "heartbeat": float(beat) if beat is not None else None,
        "writer": _text(f.attrs.get("writer", "")) or None,
    }
