"""Failures during a run: ending the whole job loudly, the non-finite policy, test hooks.

* :func:`abort_job` (called by the CLI for any exception on any rank): prints that rank's
  traceback in one write; a client rank then sends rank 0 a fault note
  (:func:`fedkd_mpi.comm.mpi.report_fault`) so that rank 0, which polls for notes in every
  wait, marks the run file ``failed`` and calls ``MPI_Abort``; the failing rank aborts by
  itself after a bounded grace period (``FEDKD_MPI_ABORT_GRACE_S``, default 10 s) in case
  rank 0 cannot.
* ``runtime.nonfinite``: a NaN/Inf training loss or update of a client either stops the run
  (``stop``: :class:`NonFiniteError` naming client and round) or drops that client's update
  for the round (``skip``): the client's private state is restored to its state before the
  round (:class:`ClientSnapshot`), a header-only SKIP message is sent, the server leaves it
  out of the average and records it in ``clients/skipped``.
* Test hooks (environment variables, read on every rank):
  ``FEDKD_MPI_FAULT=RANK:ROUND[:MODE]`` makes that rank fail in that 1-based round after
  local training (rank 0: after gathering the updates); MODE ``raise`` (default) raises,
  ``kill`` sends itself SIGKILL, ``hang`` writes its pid to ``FEDKD_MPI_FAULT_PIDFILE`` and
  sleeps (for a kill from outside). ``FEDKD_MPI_NAN=CLIENT:ROUND:WHERE[,...]`` poisons that
  client in that round: ``loss`` sets a private weight to NaN before training (the loss
  becomes NaN), ``update`` sets one entry of its update to NaN after training.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch
from mpi4py import MPI

from fedkd_mpi.comm.mpi import RemoteFault, report_fault
from fedkd_mpi.runtime.client import Client, NonFiniteError
from fedkd_mpi.storage.lease import release_current


def one_line(exc: BaseException) -> str | None:
    """The message of a failure that is fully explained in one line (a full disk, a read-only
    or unwritable path, a checkpoint file that is not what was written): printed alone, no
    traceback. None for anything else (a bug: the traceback is the useful part)."""
    from fedkd_mpi.runtime.residency import CheckpointError
    from fedkd_mpi.storage.disk import StorageError

    if isinstance(exc, (StorageError, CheckpointError)):
        return " ".join(str(exc).split())
    return None


def describe(exc: BaseException, limit: int = 500) -> str:
    """One line: ``Type: first line of the message`` (RemoteFault: the remote rank's line;
    a one-line failure: its message)."""
    if isinstance(exc, RemoteFault):
        return str(exc)[:limit]
    line = one_line(exc)
    if line is not None:
        return line[:limit]
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:limit]


def abort_job(comm: MPI.Intracomm, exc: BaseException) -> NoReturn:
    """End the whole job after ``exc`` on this rank (never returns).

    A one-line failure (:func:`one_line`) on a client rank is printed by rank 0 alone (it
    ends the job on the note); the client prints it itself only if rank 0 has not ended the
    job within the grace period. Exactly one line from fedkd-mpi either way."""
    rank = comm.Get_rank()
    line = one_line(exc)
    grace = float(os.environ.get("FEDKD_MPI_ABORT_GRACE_S", "10"))
    if isinstance(exc, RemoteFault):
        text = (f"fedkd-mpi: rank {rank}: ending the job because rank {exc.rank} failed "
                f"({exc.note}); completed rounds are kept, status = failed\n")
    elif line is not None:
        text = f"fedkd-mpi: rank {rank}: {line}; completed rounds are kept, status = failed\n"
        if rank != 0:
            report_fault(comm, line)
            time.sleep(grace)  # rank 0 prints the line and ends the job meanwhile
            _write(text)
            time.sleep(1.0)
            comm.Abort(1)
            raise SystemExit(1)  # not reached
    else:
        text = (f"fedkd-mpi: rank {rank} failed:\n"
                + "".join(traceback.format_exception(exc)))
    _write(text)
    if rank != 0 and not isinstance(exc, RemoteFault):
        report_fault(comm, describe(exc))
        # rank 0 normally ends the job within a poll interval + 1 s; if it cannot (it is not
        # in a wait), abort by ourselves after the grace period
        time.sleep(grace)
    else:
        time.sleep(1.0)
    release_current()  # rank 0: the output is free for a resume at once (no-op elsewhere)
    comm.Abort(1)
    raise SystemExit(1)  # not reached


def _write(text: str) -> None:
    """One write, then the caller pauses: MPICH's stdio forwarding can drop output that is
    still in flight when MPI_Abort tears the job down."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone (closed terminal)
        pass


# ---------------------------------------------------------------------------------------
# non-finite policy
# ---------------------------------------------------------------------------------------
@dataclass
class ClientSnapshot:
    """Deep copy of a client's private state (models, optimizers, algorithm state)."""

    private: dict | None
    proj: dict | None
    opt_private: dict | None
    opt_shared: dict | None
    state: dict

    @classmethod
    def take(cls, cl: Client) -> ClientSnapshot:
        def sd(obj: object) -> dict | None:
            return None if obj is None else copy.deepcopy(obj.state_dict())

        return cls(sd(cl.private), sd(cl.proj), sd(cl.opt_private), sd(cl.opt_shared),
                   copy.deepcopy(cl.state.state_dict()))

    def restore(self, cl: Client) -> None:
        for obj, sd in ((cl.private, self.private), (cl.proj, self.proj),
                        (cl.opt_private, self.opt_private), (cl.opt_shared, self.opt_shared)):
            if obj is not None and sd is not None:
                obj.load_state_dict(sd)
        cl.state.load_state_dict(copy.deepcopy(self.state))


def nonfinite_tensors(tensors: Sequence[torch.Tensor], names: Sequence[str]) -> str | None:
    """Description of the first tensor holding NaN/Inf, or None."""
    for t, name in zip(tensors, names, strict=False):
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            return f"non-finite update ({bad} NaN/Inf values in {name})"
    return None


def nonfinite_body(body: np.ndarray) -> bool:
    """True when a floating-point wire body holds NaN/Inf (e.g. float16 overflow)."""
    return body.dtype.kind == "f" and not bool(np.isfinite(body).all())


def nonfinite_stop(what: str) -> NonFiniteError:
    """The ``stop`` policy's error; ``what`` starts with ``client C, round R:``."""
    return NonFiniteError(f"{what} (runtime.nonfinite=stop; set runtime.nonfinite=skip to "
                          "drop such updates instead)")


# ---------------------------------------------------------------------------------------
# test hooks
# ---------------------------------------------------------------------------------------
def inject_fault(rank: int, rnd: int) -> None:
    """``FEDKD_MPI_FAULT=RANK:ROUND[:MODE]``: fail here when it names this rank and round."""
    spec = os.environ.get("FEDKD_MPI_FAULT", "")
    if not spec:
        return
    parts = spec.split(":")
    r, want = int(parts[0]), int(parts[1]) - 1
    mode = parts[2] if len(parts) > 2 else "raise"
    if r != rank or rnd != want:
        return
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        pidfile = os.environ.get("FEDKD_MPI_FAULT_PIDFILE")
        if pidfile:
            tmp = f"{pidfile}.tmp"
            with open(tmp, "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(tmp, pidfile)
        while True:
            time.sleep(1.0)
    raise RuntimeError(f"injected fault (FEDKD_MPI_FAULT) on rank {rank} in round {rnd + 1} "
                       f"at unix time {time.time():.2f}")


def injected_nan(cid: int, rnd: int) -> str | None:
    """``FEDKD_MPI_NAN=CLIENT:ROUND:WHERE[,...]``: ``loss``/``update`` for this client and
    (0-based) round, else None."""
    for item in filter(None, os.environ.get("FEDKD_MPI_NAN", "").split(",")):
        c, r, where = item.split(":")
        if int(c) == cid and int(r) - 1 == rnd:
            return where
    return None


@torch.no_grad()
def poison(params: Sequence[torch.Tensor]) -> None:
    """Set the first entry of the first tensor to NaN (test hook)."""
    params[0].view(-1)[0] = float("nan")
