"""Disk trouble as one line: no space left, and the free-space checks that find it before
HDF5 fails (HDF5 does not survive a write that fails for lack of space)."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import NoReturn

from fedkd_mpi.storage.schema import CLIENT_FIELDS, ROUND_FIELDS, TIMING_PHASES

#: statuses a run ends with (``running`` is replaced by one of them when the writer ends)


class StorageError(OSError):
    """A file-system problem with one of the run's files, already one line for the user
    (which path, what is wrong); the job prints it instead of a traceback."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def is_no_space(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, as an OSError or inside an HDF5 or torch error message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "errno = 28", "Disk quota exceeded",
                                   "errno = 122"))


def existing_ancestor(path: str | Path) -> Path:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path`` (or of its
    nearest existing parent); None where unknown."""
    try:
        st = os.statvfs(existing_ancestor(path))
    except (OSError, ValueError):
        return None
    return st.f_bavail * st.f_frsize


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # not reached


def no_space_error(what: str, path: str | Path, need: int | None = None) -> StorageError:
    """The one line for a full file system: which file, where, how much is free."""
    free = free_bytes(path)
    where = existing_ancestor(Path(path).parent)
    have = f"{human_bytes(free)} free in {where}" if free is not None else f"in {where}"
    want = f", {human_bytes(need)} to write" if need else ""
    return StorageError(errno.ENOSPC, f"no space left on device for {what} {path} "
                        f"({have}{want})")


def storage_error(exc: BaseException, what: str, path: str | Path,
                  need: int | None = None) -> BaseException:
    """``exc`` as a one-line :class:`StorageError` when it is a file-system problem (full,
    quota, read-only, permission); other exceptions unchanged."""
    if isinstance(exc, StorageError):
        return exc
    if is_no_space(exc):
        return no_space_error(what, path, need)
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM,
                                                  errno.EIO, errno.ENOENT, errno.ENOTDIR):
        return StorageError(exc.errno, f"cannot write {what} {path} "
                            f"({exc.strerror or os.strerror(exc.errno)})")
    return exc


def _reraise(exc: BaseException, what: str, path: str | Path) -> NoReturn:
    """Raise ``exc``, as a :class:`StorageError` when it is a file-system problem."""
    err = storage_error(exc, what, path)
    if err is exc:
        raise exc
    raise err from exc


#: bytes kept free for closing the file (status, metadata flush) beyond a round's append
CLOSE_RESERVE = 128 * 1024


#: metadata an append may allocate beyond its data chunks (chunk indexes, object headers)
META_SLACK = 64 * 1024


def estimate_file_bytes(num_clients: int, world_size: int, num_layers: int, rounds: int,
                        extra_fields: int) -> int:
    """Upper estimate of a run file's size (chunks are allocated whole)."""
    n, w, nl = num_clients, world_size, max(num_layers, 1)

    def chunked(chunk_rows: int, row_bytes: int) -> int:
        return math.ceil(rounds / chunk_rows) * chunk_rows * row_bytes

    total = 128 * 1024 + 2048 * rounds  # fixed metadata; chunk indexes per round
    total += (len(ROUND_FIELDS) + extra_fields) * chunked(256, 8)
    total += (len(CLIENT_FIELDS) + extra_fields) * chunked(16, 8 * n)
    total += (len(TIMING_PHASES) + 2) * chunked(16, 8 * w)
    total += chunked(4, 8 * n * nl) + chunked(16, 8 * nl)
    return total
