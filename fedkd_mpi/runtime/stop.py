"""The stop flag: how a run reacts to SIGTERM, SIGUSR1, SIGUSR2, SIGINT (Ctrl-C), SIGHUP and
SIGXCPU. Imports nothing heavy, so that ``fedkd-mpi run`` installs it before MPI, torch or
h5py are loaded (a signal during start-up then stops the job cleanly too)."""

from __future__ import annotations

import os
import signal
from typing import Any


class StopFlag:
    """Every way a user or a scheduler asks a run to stop sets a flag; the run checkpoints at
    the next round boundary, marks the file ``interrupted`` and exits 3. Repeated signals (a
    second SIGTERM, the same request reaching a rank twice: from mpiexec and from SLURM) only
    set the flag again. SIGKILL is the way to stop at once (completed rounds stay readable).

    ``install`` may be called again on the same flag (nested; ``restore`` undoes the outermost
    one); with ``announce`` the first signal prints one line (rank 0)."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT",
                                                 "SIGHUP", "SIGXCPU") if hasattr(signal, n))

    def __init__(self, announce: bool = False) -> None:
        self.signum = 0
        self.announce = announce
        self._old: dict[int, Any] = {}
        self._depth = 0

    def install(self) -> StopFlag:
        """Install the handlers (again, when nested: MPI's UCX layer takes SIGHUP for its
        debug switch during MPI_Init, so the launcher re-asserts them after it)."""
        self._depth += 1
        for s in self.SIGNALS:
            old = signal.signal(s, self._handle)
            if self._depth == 1:
                self._old[s] = old
        return self

    def _handle(self, signum: int, frame: object) -> None:
        first = not self.signum
        self.signum = self.signum or signum
        if first and self.announce:  # os.write: safe whatever the interrupted code was doing
            name = signal.Signals(signum).name
            os.write(2, (f"fedkd-mpi: {name} received: stopping at the next round boundary "
                         "(checkpoint, status interrupted, exit status 3); SIGKILL stops at "
                         "once\n").encode())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def restore(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth:
            return
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
