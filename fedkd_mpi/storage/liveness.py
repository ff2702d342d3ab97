"""Is a run still being written? The writer (host:pid) and its heartbeat judged against the
round time; and ``repair``: a killed run's file copied into one plain h5py opens, every
complete round kept."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fedkd_mpi.storage.disk import _reraise, is_no_space
from fedkd_mpi.storage.h5 import _copy_file, _discard, _fixed
from fedkd_mpi.storage.owner import writer_alive
from fedkd_mpi.storage.reading import damage, walk
from fedkd_mpi.storage.runstate import open_live, run_state
from fedkd_mpi.storage.schema import (
    ERROR_BYTES,
    RUN_ERROR,
    RUN_STATUS,
    STATUS_BYTES,
)


@dataclass
class WriterVerdict:
    """What a reader can tell about the process writing a ``running`` file."""

    alive: bool | None  # True / False: known (writer on this host); None: judged by time
    age_s: float | None  # seconds since the last heartbeat (file mtime before format 3)
    limit_s: float  # no heartbeat for longer than this: probably killed
    host: str | None
    pid: int | None
    source: str  # 'heartbeat' or 'file mtime'

    @property
    def likely_alive(self) -> bool:
        if self.alive is not None:
            return self.alive
        return self.age_s is None or self.age_s <= self.limit_s


def judge_writer(f: h5py.File, path: str | Path, now: float | None = None) -> WriterVerdict:
    """Alive or dead: the writer's pid when it ran on this host (``writer`` attr), else the
    age of its last heartbeat (``run/heartbeat_unix``; file mtime for format 1-2 files)
    against the round time: max(120 s, 5 x the longest round so far), 600 s before the
    first round."""
    now = time.time() if now is None else now
    state = run_state(f)
    writer = state["writer"]
    host = pid = None
    if writer:
        parts = str(writer).rsplit(":", 2)
        if len(parts) == 3 and parts[1].isdigit():
            host, pid = parts[0], int(parts[1])
    beat = state["heartbeat"]
    if beat is not None:
        age, source = now - float(beat), "heartbeat"
    else:
        try:
            age, source = now - os.path.getmtime(path), "file mtime"
        except OSError:
            age, source = None, "file mtime"
    walls = f.get("rounds/wall_time_s")
    limit = 600.0
    if isinstance(walls, h5py.Dataset):
        try:
            walls.refresh()
        except Exception:
            pass
        w = np.asarray(walls[()], np.float64)
        w = w[np.isfinite(w)]
        if w.size:
            limit = max(120.0, 5.0 * float(w.max()))
    return WriterVerdict(writer_alive(writer), age, limit, host, pid, source)


def complete_rounds(f: h5py.File) -> int:
    """Rounds that every per-round dataset holds (a writer killed between two appends may
    have written a row of some of them only)."""
    held: list[int] = []

    def visit(_name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.maxshape and obj.maxshape[0] is None:
            held.append(obj.shape[0])

    f.visititems(visit)
    return min(held, default=0)


def needs_repair(path: str | Path) -> bool:
    """True when HDF5 refuses to open the file without SWMR (the flags a writer killed in
    SWMR mode leaves), while an SWMR reader can; :class:`UnreadableRunFile` (one line, in
    bounded time, the file untouched) when it is damaged, empty or not HDF5."""
    with open_live(path) as f:  # without SWMR where HDF5 allows it, and checked
        try:
            walk(f, data=True)  # chunk indexes too: a damaged file is not 'nothing to do'
        except Exception as exc:
            raise damage(path, exc) from None
        return bool(f.swmr_mode)


def repair(path: str | Path, note: str) -> int:
    """Rewrite a run file whose writer died in SWMR mode into a plain one: every attribute and
    dataset copied through an SWMR reader into a new file next to it, per-round datasets cut
    to the rounds all of them hold (the complete rounds), ``status`` set to ``failed`` with
    ``note`` as its error when it was still ``running``; the new file then replaces the old
    one. Returns the rounds kept; a damaged file is refused (:class:`UnreadableRunFile`, one
    line) and left as it is."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.repair-{os.getpid()}")
    dst = None
    try:
        with open_live(path) as src:  # a damaged file: one line before anything is written
            dst = h5py.File(tmp, "w", libver="latest")
            try:
                state = run_state(src)
                rows = _copy_file(src, dst, None)
            except (OSError, RuntimeError, KeyError) as exc:
                if is_no_space(exc):
                    raise
                raise damage(path, exc) from None  # a read that failed: damaged metadata
        if state["status"] == "running":
            dst.attrs["status"] = "failed"
            dst.attrs["error"] = note
            if RUN_STATUS in dst:
                dst[RUN_STATUS][()] = _fixed("failed", STATUS_BYTES)
                dst[RUN_ERROR][()] = _fixed(note, ERROR_BYTES)
        dst.close()
        dst = None
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(dst, tmp)
        _reraise(exc, "the repaired run file", path)
    return rows
