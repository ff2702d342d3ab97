"""Opening a run file for reading in bounded time, damaged or not.

An SWMR reader (needed to follow a live run, or to read the file of a killed one) skips
HDF5's truncation check and retries every metadata read whose checksum fails, sleeping
longer each time (100 attempts by default): a truncated or corrupted file would hang it for
hours, deaf to Ctrl-C. :func:`open_run` therefore

1. opens the file without SWMR first: a complete run (or any file no SWMR writer left
   flagged) opens so, with HDF5's own checks (truncation, checksums, one attempt each);
2. only where that open says an SWMR writer holds the file (live, or killed) opens it as an
   SWMR reader whose metadata read attempts are bounded (:data:`SWMR_READ_ATTEMPTS`, through
   ``H5Pset_metadata_read_attempts`` in the libhdf5 h5py loaded, which h5py does not expose);
   where that call cannot be found, a child process must walk the metadata within
   :data:`PROBE_TIMEOUT_S` first. A file whose superblock records more bytes than it holds is
   refused unless its writer is alive (a live writer may be mid-flush);
3. walks every object header and the root attributes (:func:`walk`), so damaged metadata
   shows at once.

Whatever fails is one :class:`UnreadableRunFile` line (:func:`damage`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py

from fedkd_mpi.storage.disk import StorageError

#: metadata read attempts of an SWMR reader (HDF5: 100, with doubling sleeps between them):
#: enough for a live writer's torn metadata, a fraction of a second for a damaged file
SWMR_READ_ATTEMPTS = 28
#: the time a child process gets to walk the metadata where the attempts cannot be bounded
PROBE_TIMEOUT_S = 5.0
#: set (to anything) to skip the bounded attempts and use the child-process probe
NO_BOUND_ENV = "FEDKD_MPI_UNBOUNDED_SWMR"
#: what to do about a damaged file
DAMAGED_ADVICE = ("'fedkd-mpi repair' cannot fix that: restore a copy of the file or run the "
                  "job again (--overwrite)")
_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FLAG_WRITE, _FLAG_SWMR_WRITE = 0x01, 0x04


class UnreadableRunFile(StorageError):
    """A run file that cannot be read; ``str()`` is one line that names the file, what is
    wrong and what to do. ``kind``: ``damaged`` (truncated, corrupted), ``not_run_file``
    (empty, not HDF5), ``os`` (the system refused: permissions, locks)."""

    def __init__(self, path: str | Path, reason: str, kind: str = "damaged") -> None:
        text = {"damaged": f"{path}: damaged run file, cannot be read: {reason}; "
                           f"{DAMAGED_ADVICE}",
                "not_run_file": f"{path}: not a fedkd_mpi run file ({reason})"}.get(
                    kind, f"{path}: cannot be read: {reason}")
        super().__init__(None, text)
        self.path, self.reason, self.kind = Path(path), reason, kind
        self.damaged = kind == "damaged"


@dataclass(frozen=True)
class Superblock:
    """What the first bytes of a version 2-3 superblock (``libver='latest'``) say."""

    flags: int  # file consistency flags: 0x01 open for writing, 0x04 SWMR writer
    stored_eof: int  # the end of file address recorded at the last flush
    size: int  # the bytes the file holds

    @property
    def swmr_flagged(self) -> bool:
        return bool(self.flags & (_FLAG_WRITE | _FLAG_SWMR_WRITE))


def superblock(path: str | Path) -> Superblock | None:
    """The superblock at offset 0 when it is of version 2 or 3 with 8-byte offsets (what
    fedkd_mpi writes); None for anything else (HDF5 then judges alone)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(48)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return None
    if len(head) < 44 or head[:8] != _SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
        return None
    base, _ext, eof = struct.unpack_from("<3Q", head, 12)
    return Superblock(flags=head[11], stored_eof=base + eof, size=size)


def damage(path: str | Path, exc: BaseException) -> UnreadableRunFile:
    """The one line for an exception HDF5 (through h5py) raised while reading ``path``."""
    if isinstance(exc, UnreadableRunFile):
        return exc
    raw = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = raw.strip().splitlines()[0] if raw.strip() else type(exc).__name__
    m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if m:
        return UnreadableRunFile(path, f"truncated ({m[1]} of {m[2]} bytes)")
    if "signature not found" in text:
        return UnreadableRunFile(path, "not an HDF5 file", "not_run_file")
    os_error = re.search(r"unable to (?:open|lock) file.*error message = '([^']*)'", text)
    if os_error or isinstance(exc, (PermissionError, FileNotFoundError)):
        why = os_error[1] if os_error else (exc.strerror if isinstance(exc, OSError) else "")
        return UnreadableRunFile(path, why or text, "os")
    if "checksum" in text:
        return UnreadableRunFile(path, "corrupted (a metadata checksum does not match)")
    inner = re.search(r"\((.+)\)\s*$", text)
    return UnreadableRunFile(path, f"corrupted ({(inner[1] if inner else text).strip()})")


def read_error(path: str | Path, exc: BaseException) -> str:
    """The one line for an exception raised while reading an open run file: HDF5's
    (checksums, damaged chunk indexes) say the file is damaged."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, (OSError, RuntimeError)) or "Unable to" in text or "checksum" in text:
        return str(damage(path, exc))
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{path}: damaged or unexpected run file ({first})"


@functools.lru_cache(maxsize=1)
def _libhdf5() -> ctypes.CDLL | None:
    """The libhdf5 that h5py loaded, when ``H5Pset_metadata_read_attempts`` can be found in
    it (the path mapped into this process first; an h5py wheel's bundled copy else)."""
    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = os.path.basename(path)
                if name.startswith("libhdf5") and not name.startswith("libhdf5_hl") \
                        and path not in candidates:
                    candidates.append(path)
    except OSError:
        pass
    mapped = bool(candidates)
    if not candidates:  # no /proc (macOS): the copy an h5py wheel bundles, or the system's
        here = os.path.dirname(h5py.__file__)
        for pattern in ("../h5py.libs/libhdf5-*", ".dylibs/libhdf5.*"):
            candidates += sorted(glob.glob(os.path.join(here, pattern)))
        found = ctypes.util.find_library("hdf5")
        candidates += [found] if found else []
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            setter, getter = lib.H5Pset_metadata_read_attempts, lib.H5Pget_metadata_read_attempts
            if not mapped and not _same_version(lib):
                continue
            if not mapped:  # maybe another copy: its error stack must not print on stderr
                lib.H5Eset_auto2(ctypes.c_int64(0), None, None)
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
        getter.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_uint)]
        getter.restype = ctypes.c_int
        if _bounded_fapl(lib) is not None:  # the same library as h5py's: the call took
            return lib
    return None


def _same_version(lib: ctypes.CDLL) -> bool:
    """Whether ``lib`` is the HDF5 version h5py was built with."""
    v = [ctypes.c_uint(0) for _ in range(3)]
    if lib.H5get_libversion(*map(ctypes.byref, v)) < 0:
        return False
    return tuple(x.value for x in v) == tuple(h5py.version.hdf5_version_tuple[:3])


def _bounded_fapl(lib: ctypes.CDLL) -> h5py.h5p.PropFAID | None:
    """A file-access property list (libver latest) with bounded metadata read attempts,
    checked by reading the value back; None when the library does not take it."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    got = ctypes.c_uint(0)
    if lib.H5Pset_metadata_read_attempts(fapl.id, SWMR_READ_ATTEMPTS) < 0 or \
            lib.H5Pget_metadata_read_attempts(fapl.id, ctypes.byref(got)) < 0 or \
            got.value != SWMR_READ_ATTEMPTS:
        return None
    return fapl


_PROBE = """
import sys, h5py
from fedkd_mpi.storage.reading import walk
with h5py.File(sys.argv[1], "r", libver="latest", swmr=True) as f:
    walk(f, data=sys.argv[2] == "1")
"""


def _open_swmr(path: Path, data: bool = True) -> h5py.File:
    """An SWMR reader of ``path`` that cannot hang on damaged metadata (where the attempts
    cannot be bounded, a child process reads it first: the metadata, with ``data`` every
    dataset too)."""
    lib = None if os.environ.get(NO_BOUND_ENV) else _libhdf5()
    fapl = _bounded_fapl(lib) if lib is not None else None
    if fapl is not None:
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ,
                            fapl=fapl)
        return h5py.File(fid)
    try:  # unbounded attempts: a child process must read the metadata in bounded time first
        res = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(int(data))],
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                             env=_child_env())
    except subprocess.TimeoutExpired:
        raise UnreadableRunFile(path, "corrupted (its metadata could not be read within "
                                f"{PROBE_TIMEOUT_S:.0f} s)") from None
    if res.returncode:
        last = [ln for ln in res.stderr.splitlines() if ln.strip()]
        raise damage(path, RuntimeError(last[-1] if last else "unreadable"))
    return h5py.File(path, "r", libver="latest", swmr=True)


def _child_env() -> dict[str, str]:
    """This environment, with this package importable in a child process."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        x for x in (root, os.environ.get("PYTHONPATH", "")) if x)}


def walk(f: h5py.File, data: bool = False) -> None:
    """Read every object header and the root attributes (each checksummed), with ``data``
    every dataset too (chunk indexes): damaged metadata raises here rather than half-way
    through a reader."""
    dict(f.attrs)

    def visit(_name: str, obj: object) -> None:
        if isinstance(obj, (h5py.Group, h5py.Dataset)):
            list(obj.attrs)
        if isinstance(obj, h5py.Dataset):
            _ = obj.shape, obj.dtype, obj.chunks
            if data:
                obj[()]

    f.visititems(visit)


def _writer_dead(f: h5py.File) -> bool:
    """True when the file's writer (root attr ``writer``) ran on this host and is gone."""
    from fedkd_mpi.storage.owner import writer_alive

    raw = f.attrs.get("writer", "")
    return writer_alive(raw.decode() if isinstance(raw, bytes) else str(raw)) is False


def _close(f: h5py.File) -> None:
    try:
        f.close()
    except Exception:
        pass


def open_run(path: str | Path, verify: bool = True) -> h5py.File:
    """Open a run file for reading (live, killed or ended) in bounded time; raises
    :class:`UnreadableRunFile` (one line) for a damaged, empty or non-HDF5 file, and the
    OSError of ``open`` for a missing or unreadable path. Never writes."""
    path = Path(path)
    size = os.stat(path).st_size  # FileNotFoundError, PermissionError: the caller's words
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory", str(path))
    if size == 0:
        raise UnreadableRunFile(path, "an empty file, 0 bytes", "not_run_file")
    sb = superblock(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        text = str(exc)
        held = any(s in text for s in ("already open for write", "consistency flags",
                                       "unable to lock file"))
        if not (held or ("truncated file" in text and sb is not None and sb.swmr_flagged)):
            raise damage(path, exc) from None
        try:  # an SWMR writer's file (live or killed): bounded SWMR reader
            f = _open_swmr(path, data=sb is None or sb.stored_eof <= sb.size)
        except (OSError, RuntimeError, ValueError, KeyError) as exc2:
            raise damage(path, exc2) from None
        try:
            short = sb is not None and sb.stored_eof > sb.size and _writer_dead(f)
        except Exception as exc2:
            _close(f)
            raise damage(path, exc2) from None
        if short:
            _close(f)
            raise UnreadableRunFile(path, f"truncated ({sb.size} of {sb.stored_eof} bytes; "
                                    "its writer is gone)") from None
    if verify:
        try:
            walk(f)
        except Exception as exc:
            _close(f)
            raise damage(path, exc) from None
    return f
