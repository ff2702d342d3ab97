"""Temporary directories that outlive no run: a small watcher process removes one as soon
as the process that made it is gone, however it ended (a normal exit, an exception, MPI_Abort
of the job, SIGKILL). The watcher is the owner's child in its own session (a signal to the
job's process group spares it); it sees the owner go when it is re-parented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_WATCH = """
import os, shutil, sys, time
owner, path = int(sys.argv[1]), sys.argv[2]
while os.getppid() == owner:
    time.sleep(0.25)
shutil.rmtree(path, ignore_errors=True)
"""

_watchers: list[subprocess.Popen] = []  # kept referenced: never reaped while the owner runs


def remove_when_gone(path: Path) -> None:
    """Remove ``path`` (a directory tree) once this process has ended."""
    _watchers.append(subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WATCH, str(os.getpid()), str(path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True))
