"""Who writes a run file: the writer's identity ``host:pid:start`` (``writer_id``) and whether
that process still lives (``writer_alive``), judged the same way by every reader, by the
lease and by ``repair``."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name ([0] = state); [] where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_ticks(pid: int) -> int:
    try:
        return int(_proc_stat(pid)[19])
    except (ValueError, IndexError):
        return 0


def writer_id() -> str:
    """``host:pid:start`` of this process (start: clock ticks after boot from /proc, 0 where
    unknown), recorded in the root attr ``writer`` to tell a live writer from a dead one."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def writer_alive(writer: str | None) -> bool | None:
    """Whether the process that wrote ``writer`` (:func:`writer_id`) is alive: True / False
    when it ran on this host, None when that cannot be told (another host, unknown)."""
    if not writer:
        return None
    parts = str(writer).rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return None
    try:
        pid, ticks = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return None
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X", "x"):  # a zombie: dead, not yet reaped
        return False
    now = _start_ticks(pid)
    return not (ticks and now and now != ticks)  # another process reusing the pid: gone
