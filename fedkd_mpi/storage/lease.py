"""One owner per output: a lease file beside the run file that every node can see.

``<output>.lock`` holds the owner (host, pid and start ticks, the command, when it started)
and a heartbeat that a thread of the owner rewrites every few seconds. It is created with
``os.link`` of a complete temporary file, which is atomic on local and NFS file systems, so of
two jobs that start together exactly one gets it. A lease is *fresh* while its owner runs on
this host (pid alive, same start ticks) or, for an owner on another host, while its heartbeat
is younger than the timeout (``runtime.lease_timeout_s``; the nodes' clocks must agree to
well within it). A stale lease (owner dead or silent) is taken over: it is renamed away first,
so of two jobs taking it over at once one wins, and the winner records a note
(:attr:`Lease.takeover`) that the run file keeps.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fedkd_mpi.storage.owner import writer_alive, writer_id

#: default seconds without a heartbeat after which an owner on another host counts as dead
DEFAULT_TIMEOUT_S = 120.0
_MAX_BYTES = 4096  # a lease file is one small JSON object


class LeaseHeld(Exception):
    """The output is owned by another live job; ``str()`` is the one line for the user."""


def lease_path(output: str | Path) -> Path:
    p = Path(output)
    return p.with_name(p.name + ".lock")


@dataclass
class Holder:
    """What a lease file says about its owner."""

    host: str
    pid: int
    writer: str  # host:pid:start ticks (storage.h5.writer_id)
    command: str
    job: str
    started_unix: float
    heartbeat_unix: float
    slurm: str = ""  # SLURM_JOB_ID:SLURM_RESTART_COUNT of the owner, '' outside SLURM

    def describe(self, now: float) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_unix))
        return (f"{self.command} by pid {self.pid} on {self.host} since {since}, last heartbeat "
                f"{max(0.0, now - self.heartbeat_unix):.0f} s ago")


def read_holder(path: Path) -> Holder | None:
    """The lease's owner, or None when the file is missing or unreadable (a torn or foreign
    file counts as no owner only through :func:`_stale`, which treats it by its mtime)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_BYTES + 1)
        d = json.loads(raw)
        return Holder(str(d["host"]), int(d["pid"]), str(d["writer"]), str(d["command"]),
                      str(d["job"]), float(d["started_unix"]), float(d["heartbeat_unix"]),
                      str(d.get("slurm", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stale(path: Path, holder: Holder | None, timeout_s: float, now: float) -> bool:
    """Whether the lease at ``path`` may be taken over."""
    if holder is None:  # unreadable: judged by the file's age (a writer mid-rename is fresh)
        try:
            return now - path.stat().st_mtime > timeout_s
        except OSError:
            return True
    alive = writer_alive(holder.writer)
    if alive is not None:  # the owner ran on this host: its pid decides
        return not alive
    if _requeued_from(holder.slurm):  # SLURM requeued the owner's job: it has ended
        return True
    return now - holder.heartbeat_unix > timeout_s


def _slurm_tag() -> str:
    job = os.environ.get("SLURM_JOB_ID", "")
    return f"{job}:{os.environ.get('SLURM_RESTART_COUNT', '0')}" if job else ""


def _requeued_from(tag: str) -> bool:
    """Whether this process is a later run of the same SLURM job than the one that wrote
    ``tag`` (SLURM starts a requeued job only once the previous run has ended)."""
    mine = _slurm_tag()
    if not tag or not mine:
        return False
    job, _, count = tag.partition(":")
    my_job, _, my_count = mine.partition(":")
    try:
        return job == my_job and int(my_count) > int(count)
    except ValueError:
        return False


class Lease:
    """This process's lease on one output (rank 0 of a run, resume or repair)."""

    def __init__(self, output: str | Path, command: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                 ) -> None:
        self.path = lease_path(output)
        self.command = command
        self.timeout_s = float(timeout_s)
        self.job = uuid.uuid4().hex
        self.started = time.time()
        self.takeover: str | None = None  # the note when a stale lease was taken over
        self.lost: str | None = None  # set by the heartbeat when another job took the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False
        self.created: list[Path] = []  # folders made for the lease, innermost first

    def _content(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "writer": writer_id(), "command": self.command, "job": self.job,
                           "started_unix": self.started, "heartbeat_unix": time.time(),
                           "slurm": _slurm_tag()}).encode()

    def _tmp(self, what: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{what}-{socket.gethostname()}-"
                                   f"{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def acquire(self) -> Lease:
        """Take the lease, or raise :class:`LeaseHeld` (one line naming the owner); OSError
        when the directory cannot hold it."""
        parent = self.path.parent
        while not parent.exists() and parent != parent.parent:  # the output's new folders
            self.created.append(parent)
            parent = parent.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp("new")
        tmp.write_bytes(self._content())
        try:
            for _ in range(20):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    break
                except FileExistsError:
                    pass
                now = time.time()
                holder = read_holder(self.path)
                if holder is not None and holder.job == self.job:
                    self.held = True  # our link landed although the call failed (NFS retry)
                    break
                if not _stale(self.path, holder, self.timeout_s, now):
                    raise LeaseHeld(
                        f"'output' {self.path.with_suffix('')} is in use by another "
                        f"job: {holder.describe(now) if holder else 'an unreadable lease'} "
                        f"(lease {self.path}); wait for it to end, stop it, or choose another "
                        "output") from None
                aside = self._tmp("stale")
                try:
                    os.rename(self.path, aside)  # one racer wins; the others retry
                except FileNotFoundError:
                    continue
                old = read_holder(aside)
                aside.unlink(missing_ok=True)
                who = old.describe(now) if old else "an unreadable owner"
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
                self.takeover = f"took over a stale lease ({who}) at {when}"
            else:
                raise LeaseHeld(f"could not take the lease {self.path} (other jobs keep "
                                "taking it over); retry")
        finally:
            tmp.unlink(missing_ok=True)
        return self

    def refresh(self) -> None:
        """Rewrite the heartbeat (atomically), unless another job has taken the lease."""
        holder = read_holder(self.path)
        if holder is None or holder.job != self.job:
            self.lost = (f"the lease {self.path} was taken by another job"
                         + (f" ({holder.describe(time.time())})" if holder else ""))
            return
        tmp = self._tmp("beat")
        try:
            tmp.write_bytes(self._content())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a transient error: the next beat tries again

    def start_heartbeat(self) -> Lease:
        """A daemon thread that refreshes the lease every ``timeout_s / 8`` (at most 15 s)."""
        every = min(15.0, self.timeout_s / 8)

        def beat() -> None:
            while not self._stop.wait(every):
                self.refresh()

        self._thread = threading.Thread(target=beat, name="fedkd-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            holder = read_holder(self.path)
            if holder is not None and holder.job == self.job:
                self.path.unlink(missing_ok=True)
            self.held = False
        for d in self.created:  # left only if the run wrote nothing into them
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []


_current: Lease | None = None


def hold(lease: Lease | None) -> None:
    """Remember this process's lease, so that an abort can release it."""
    global _current
    _current = lease


def lost() -> str | None:
    """Why this process's lease is no longer its own (another job took it over), or None."""
    return _current.lost if _current is not None else None


def release_current() -> None:
    """Release this process's lease, if any (before MPI_Abort; never raises)."""
    lease = _current
    if lease is not None:
        try:
            lease.release()
        except Exception:
            pass
