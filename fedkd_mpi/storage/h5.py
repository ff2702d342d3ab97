"""The rank-0 HDF5 writer (schema in docs/hdf5.md).

Every group, dataset and attribute is created up front, in a temporary file next to the
output; the file then switches to SWMR mode and only then takes the output's name (so an
existing file given with ``--overwrite`` is replaced only by a complete, set-up run file, and
a failure while creating it leaves nothing behind). Each round only appends along the first
(unlimited) axis and flushes, so a reader can follow a live run and a killed run leaves every
completed round readable.

The writer never reopens the file: its status, error and heartbeat live in fixed-size
datasets (``run/``, format 3) overwritten in place, which SWMR allows, so readers holding the
file open (file locks included) cannot make the end of a run fail. Before each append the
free space of the file system is checked against what the round can allocate (plus a reserve
for closing the file), so a full disk ends the run with a one-line :class:`StorageError`
and a file that says ``failed`` instead of a corrupt one (HDF5 does not survive a write that
fails for lack of space).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from fedkd_mpi.storage.disk import (
    CLOSE_RESERVE,
    META_SLACK,
    _reraise,
    free_bytes,
    no_space_error,
)
from fedkd_mpi.storage.runstate import (  # noqa: F401 (readers import these from here too)
    FINAL_STATUSES,
    _text,
    checkpoint_record,
    open_live,
    run_state,
    writer_id,
)
from fedkd_mpi.storage.schema import (
    CLIENT_FIELDS,
    ERROR_BYTES,
    FORMAT_VERSION,
    ROUND_FIELDS,
    RUN_CHECKPOINT_ROUND,
    RUN_CHECKPOINT_SHA256,
    RUN_ERROR,
    RUN_GROUP,
    RUN_HEARTBEAT,
    RUN_STATUS,
    STATUS_BYTES,
    TIMING_PHASES,
    dtype_of,
)


def _fixed(text: str, nbytes: int) -> np.bytes_:
    """UTF-8, cut on a character boundary to ``nbytes``."""
    raw = text.encode("utf-8")[:nbytes]
    return np.bytes_(raw.decode("utf-8", "ignore").encode("utf-8"))


def _create_run_group(f: h5py.File, status: str = "running",
                      checkpoints: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """``run/``: status, error, heartbeat and the checkpoint record (``checkpoints``: the
    rounds and SHA-256s to keep, on resume)."""
    rounds, digests = checkpoints or (np.full(2, -1, np.int64), np.array([b"", b""], "S64"))
    f.create_dataset(RUN_STATUS, data=_fixed(status, STATUS_BYTES), dtype=f"S{STATUS_BYTES}")
    f.create_dataset(RUN_ERROR, data=_fixed("", ERROR_BYTES), dtype=f"S{ERROR_BYTES}")
    f.create_dataset(RUN_HEARTBEAT, data=time.time(), dtype=np.float64)
    f.create_dataset(RUN_CHECKPOINT_ROUND, data=np.asarray(rounds, np.int64))
    f.create_dataset(RUN_CHECKPOINT_SHA256, data=np.asarray(digests, "S64"))


class RunWriter:
    """Creates the run file and appends one row per completed round."""

    def __init__(self, path: str | Path, attrs: Mapping[str, object], num_clients: int,
                 world_size: int, layer_names: list[str], layer_shapes: np.ndarray,
                 static: Mapping[str, np.ndarray] | None = None,
                 extra_fields: tuple[str, ...] = ()) -> None:
        """``static``: extra fixed datasets by path (e.g. ``partition/label_hist``).
        ``extra_fields``: more float64 ``rounds/<name>`` and ``clients/<name>`` datasets
        (secondary metrics such as ``mentor_f1``), appended like the fixed ones."""
        self.path = Path(path)
        n, w, nl = num_clients, world_size, len(layer_names)
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
        f = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = h5py.File(tmp, "w", libver="latest")
            for k, v in attrs.items():
                try:
                    f.attrs[k] = _attr(v)
                except TypeError as exc:
                    raise TypeError(f"attribute {k!r}: {exc}") from None
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["status"] = "running"
            f.attrs["writer"] = writer_id()
            f.attrs["run_id"] = uuid.uuid4().hex  # kept by every resume of this run
            _create_run_group(f)
            for name in ROUND_FIELDS:
                f.create_dataset(f"rounds/{name}", (0,), maxshape=(None,),
                                 dtype=dtype_of(name), chunks=(256,))
            for name in CLIENT_FIELDS:
                f.create_dataset(f"clients/{name}", (0, n), maxshape=(None, n),
                                 dtype=dtype_of(name), chunks=(16, n))
            for name in TIMING_PHASES:
                f.create_dataset(f"timing/{name}", (0, w), maxshape=(None, w),
                                 dtype=np.float64, chunks=(16, w))
            f.create_dataset("memory/rss_mb", (0, w), maxshape=(None, w), dtype=np.float64,
                             chunks=(16, w))
            f.create_dataset("replicas/checksum", (0, w), maxshape=(None, w), dtype=np.int64,
                             chunks=(16, w))
            f.create_dataset("layers/names", data=np.array(layer_names, dtype=object),
                             dtype=h5py.string_dtype())
            f.create_dataset("layers/shape",
                             data=np.asarray(layer_shapes, np.int64).reshape(nl, 2))
            f.create_dataset("layers/rank_up", (0, n, nl), maxshape=(None, n, None),
                             dtype=np.int64, chunks=(4, n, max(nl, 1)))
            f.create_dataset("layers/rank_down", (0, nl), maxshape=(None, None),
                             dtype=np.int64, chunks=(16, max(nl, 1)))
            for name in extra_fields:
                f.create_dataset(f"rounds/{name}", (0,), maxshape=(None,), dtype=np.float64,
                                 chunks=(256,))
                f.create_dataset(f"clients/{name}", (0, n), maxshape=(None, n),
                                 dtype=np.float64, chunks=(16, n))
            for name, value in (static or {}).items():
                f.create_dataset(name, data=np.asarray(value))
            f.swmr_mode = True
            os.replace(tmp, self.path)  # an old file (--overwrite) goes only now
        except BaseException as exc:
            _discard(f, tmp)
            _reraise(exc, "the run file", self.path)
        self.f: h5py.File | None = f
        self.rows = 0
        self._cache()

    def _cache(self) -> None:
        """Open dataset handles, kept for the whole run: a handle released after each write
        would flush (and report errors) in h5py's deallocator, where nothing can catch them."""
        ds: dict[str, h5py.Dataset] = {}

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                ds[name] = obj

        assert self.f is not None
        self.f.visititems(visit)
        self._ds = ds
        self._per_round = [d for d in ds.values() if d.maxshape and d.maxshape[0] is None]
        self.broken = False

    @classmethod
    def resume(cls, path: str | Path, rows: int,
               attrs: Mapping[str, object] | None = None) -> RunWriter:
        """Continue an existing run file after its first ``rows`` rounds (checkpoint resume).

        The file (possibly left by a killed SWMR writer, which HDF5 refuses to reopen for
        writing) is copied into a fresh file next to it with every per-round dataset (unlimited
        first axis) truncated to ``rows``; ``attrs`` are set, status becomes ``running``, the
        copy switches to SWMR mode and only then atomically replaces the original (which stays
        as it was if anything fails before)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.resume-{os.getpid()}")
        dst = None
        try:
            dst = h5py.File(tmp, "w", libver="latest")
            with open_live(path) as src:
                _copy_file(src, dst, rows)
            for k, v in (attrs or {}).items():
                dst.attrs[k] = _attr(v)
            dst.attrs["status"] = "running"
            dst.attrs["format_version"] = FORMAT_VERSION  # a format-2 file gains run/
            dst.attrs["writer"] = writer_id()
            if "error" in dst.attrs:  # the failure that ended the previous attempt
                del dst.attrs["error"]
            if "run_id" not in dst.attrs:  # a file from before run ids
                dst.attrs["run_id"] = uuid.uuid4().hex
            kept = None
            if RUN_CHECKPOINT_ROUND in dst:  # the checkpoints stay resumable
                kept = (dst[RUN_CHECKPOINT_ROUND][()], dst[RUN_CHECKPOINT_SHA256][()])
            if RUN_GROUP in dst:
                del dst[RUN_GROUP]
            _create_run_group(dst, checkpoints=kept)
            dst.swmr_mode = True
            os.replace(tmp, path)
        except BaseException as exc:
            _discard(dst, tmp)
            _reraise(exc, "the run file", path)
        self = cls.__new__(cls)
        self.path = path
        self.f = dst
        self.rows = rows
        self._cache()
        return self

    def append_bytes(self) -> int:
        """What the next append may allocate: a new chunk of every per-round dataset whose
        chunks are full, plus metadata."""
        need = META_SLACK
        for d in self._per_round:
            if d.chunks and self.rows % d.chunks[0] == 0:
                need += int(np.prod(d.chunks)) * d.dtype.itemsize
        return need

    def check_space(self) -> None:
        """StorageError (one line) unless the file system holds the next append and the
        reserve for closing the file."""
        need = self.append_bytes() + CLOSE_RESERVE
        free = free_bytes(self.path)
        if free is not None and free < need:
            raise no_space_error("the run file", self.path, need)

    def append(self, rounds: Mapping[str, float], clients: Mapping[str, np.ndarray],
               timing: Mapping[str, np.ndarray], rss_mb: np.ndarray, rank_up: np.ndarray,
               rank_down: np.ndarray, checksum: np.ndarray) -> None:
        """Append one completed round and flush (after checking the free space)."""
        f = self.f
        assert f is not None, "writer closed"
        self.check_space()
        ds = self._ds
        i = self.rows
        try:
            for name in ROUND_FIELDS:
                _put(ds[f"rounds/{name}"], i, rounds[name])
            for name in CLIENT_FIELDS:
                _put(ds[f"clients/{name}"], i, clients[name])
            for group, values, fixed in (("rounds", rounds, ROUND_FIELDS),
                                         ("clients", clients, CLIENT_FIELDS)):
                for name in values:  # extra_fields (secondary metrics)
                    if name not in fixed and f"{group}/{name}" in ds:
                        _put(ds[f"{group}/{name}"], i, values[name])
            for name in TIMING_PHASES:
                _put(ds[f"timing/{name}"], i, timing[name])
            _put(ds["memory/rss_mb"], i, rss_mb)
            _put(ds["layers/rank_up"], i, rank_up)
            _put(ds["layers/rank_down"], i, rank_down)
            _put(ds["replicas/checksum"], i, checksum)
            ds[RUN_HEARTBEAT][()] = time.time()
            f.flush()
        except Exception as exc:
            self.broken = True
            _reraise(exc, "the run file", self.path)
        self.rows += 1

    @property
    def run_id(self) -> str:
        assert self.f is not None, "writer closed"
        return _text(self.f.attrs["run_id"])

    def record_checkpoint(self, slot: int, rnd: int, digest: str) -> None:
        """Record the checkpoint manifest of round ``rnd`` (SHA-256 ``digest``): slot 1 before
        it is written, slot 0 once it is (slot 1 cleared then), so a kill at any moment
        leaves the manifest on disk recorded. In place, flushed; a failure raises."""
        if self.f is None or self.broken:
            raise RuntimeError(f"{self.path}: the run file is closed; the checkpoint of round "
                               f"{rnd} cannot be recorded")
        rounds, digests = self._ds[RUN_CHECKPOINT_ROUND], self._ds[RUN_CHECKPOINT_SHA256]
        r, d = rounds[()], digests[()]
        r[slot], d[slot] = rnd, digest.encode()
        if slot == 0:
            r[1], d[1] = -1, b""
        try:
            rounds[()] = r
            digests[()] = d
            self.f.flush()
        except Exception as exc:
            self.broken = True
            _reraise(exc, "the run file", self.path)

    def heartbeat(self) -> None:
        """Record that the writer is alive (after work between appends, e.g. a checkpoint);
        best effort: an overwrite in place, nothing allocated."""
        if self.f is None or self.broken:
            return
        try:
            self._ds[RUN_HEARTBEAT][()] = time.time()
            self.f.flush()
        except Exception:
            self.broken = True

    def close(self, status: str, error: str | None = None, strict: bool = True) -> None:
        """Record the final status (and the one-line error of a failed run) and close.

        Everything is written in place while the file is still in SWMR mode (the ``run/``
        datasets, then the root attrs ``status`` / ``error`` for readers of format 1-2). With
        ``strict`` a failure to write or close raises a :class:`StorageError`; without, it is
        swallowed (the caller is already reporting another failure)."""
        f = self.f
        if f is None:
            return
        self.f = None
        hook = sys.unraisablehook
        sys.unraisablehook = _quiet  # h5py reports failed flushes of released ids there
        failure: BaseException | None = None
        try:
            try:
                if status == "completed" and RUN_CHECKPOINT_ROUND in self._ds:
                    self._ds[RUN_CHECKPOINT_ROUND][()] = np.full(2, -1, np.int64)  # none left
                    self._ds[RUN_CHECKPOINT_SHA256][()] = np.array([b"", b""], "S64")
                self._ds[RUN_STATUS][()] = _fixed(status, STATUS_BYTES)
                self._ds[RUN_ERROR][()] = _fixed(error or "", ERROR_BYTES)
                self._ds[RUN_HEARTBEAT][()] = time.time()
                f.flush()
            except Exception as exc:
                failure = exc
            if failure is None:
                try:  # the attrs for format 1-2 readers: best effort (run/ is the record)
                    f.attrs.modify("status", status)  # in place: same type and shape
                    if error:
                        f.attrs["error"] = error
                    f.flush()
                except Exception:
                    pass
            self._ds, self._per_round = {}, []
            try:
                f.close()
            except Exception as exc:
                failure = failure or exc
        finally:
            sys.unraisablehook = hook
        if failure is not None and strict:
            _reraise(failure, "the run file", self.path)


def _quiet(_unraisable: object) -> None:
    pass


def _discard(f: h5py.File | None, tmp: Path) -> None:
    """Close (quietly) and delete a half-written temporary file."""
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet
    try:
        if f is not None:
            try:
                f.close()
            except Exception:
                pass
    finally:
        sys.unraisablehook = hook
    try:
        tmp.unlink()
    except OSError:
        pass


def _copy_file(src: h5py.File, dst: h5py.File, rows: int | None) -> int:
    """Copy every attribute and object of ``src`` into ``dst``; per-round datasets (unlimited
    first axis) cut to ``rows`` (None: the rows all of them hold). Returns the rows kept;
    ValueError when a per-round dataset holds fewer than ``rows``."""
    for k in src.attrs:
        dst.attrs.create(k, src.attrs[k], dtype=src.attrs.get_id(k).dtype)
    for k in src:
        src.copy(src[k], dst, name=k)
    per_round: list[h5py.Dataset] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.maxshape and obj.maxshape[0] is None:
            per_round.append(obj)

    dst.visititems(visit)
    held = min((d.shape[0] for d in per_round), default=0)
    if rows is None:
        rows = held
    short = [d.name for d in per_round if d.shape[0] < rows]
    if short:
        raise ValueError(f"{src.filename}: datasets {short} have fewer than {rows} rounds")
    for d in per_round:
        d.resize(rows, axis=0)
    return rows


def _attr(value: object) -> object:
    """Strings (and lists of them) as HDF5 variable-length UTF-8."""
    if isinstance(value, str):
        return str(value)  # plain str: subclasses (e.g. TorchVersion) confuse h5py
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind
                                             in "OU"):
        items = list(value)
        if all(isinstance(x, str) for x in items):
            return np.array(items, dtype=h5py.string_dtype())
    return value


def _put(ds: h5py.Dataset, i: int, value: object) -> None:
    ds.resize(i + 1, axis=0)
    ds[i] = value

