"""MPI transport: uppercase (buffer) collectives on typed numpy arrays, never pickles.

Every wait goes through :func:`wait`, which sleep-polls a non-blocking request instead of
spinning inside MPI (on oversubscribed CPUs a spinning waiter steals cycles from the ranks
that are training). ``poll_s = 0`` blocks in MPI instead. A sleeping rank makes no MPI
progress, though: MPICH moves a large message in pieces, each when both ends test, so a
sleep-polled transfer of 2 MB took 1.5 s (3.8 ms blocking). Hence each exchange first waits,
sleeping, until every rank is there (a barrier, or the broadcast's size), then moves the
payload polling without sleep: a short spin, since nobody is still computing.

Fault channel: a client rank that fails sends rank 0 a short UTF-8 note on
:data:`FAULT_TAG` (:func:`report_fault`) before it aborts. On rank 0 (once
:func:`watch_faults` ran, which :class:`Transport` does) every :func:`wait` also probes that
tag and raises :class:`RemoteFault`, so rank 0 can mark the run file failed before it calls
``MPI_Abort``. With a watch installed, ``poll_s = 0`` polls instead of blocking in ``Wait``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from fedkd_mpi.comm.placement import Placement

FAULT_TAG = 0x7FA  # point-to-point tag of fault notes (collectives never use tags)
FAULT_NOTE_MAX = 4096  # bytes of a fault note kept


class RemoteFault(RuntimeError):
    """Another rank reported a failure (raised on rank 0 inside :func:`wait`)."""

    def __init__(self, rank: int, note: str) -> None:
        super().__init__(f"rank {rank} failed: {note}")
        self.rank = rank
        self.note = note


class _FaultWatch:
    def __init__(self, comm: MPI.Intracomm) -> None:
        self.comm = comm
        self.status = MPI.Status()

    def check(self) -> None:
        if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=FAULT_TAG, status=self.status):
            return
        src, n = self.status.Get_source(), self.status.Get_count(MPI.BYTE)
        buf = np.empty(n, np.uint8)
        self.comm.Recv([buf, MPI.BYTE], source=src, tag=FAULT_TAG)
        raise RemoteFault(src, buf.tobytes().decode("utf-8", "replace"))


_watch: _FaultWatch | None = None


def watch_faults(comm: MPI.Intracomm) -> None:
    """From now on, :func:`wait` on this rank raises :class:`RemoteFault` on a fault note."""
    global _watch
    _watch = _FaultWatch(comm)


def report_fault(comm: MPI.Intracomm, note: str, timeout_s: float = 2.0) -> bool:
    """Send rank 0 a fault note (from a failing rank != 0); True when it was delivered
    (or buffered) within ``timeout_s``. Never raises."""
    try:
        data = np.frombuffer(note.encode("utf-8", "replace")[:FAULT_NOTE_MAX], np.uint8).copy()
        req = comm.Isend([data, MPI.BYTE], dest=0, tag=FAULT_TAG)
        end = time.monotonic() + timeout_s
        while not req.Test():
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True
    except Exception:  # best effort on a rank that is going down anyway
        return False


def wait(req: MPI.Request, poll_s: float) -> None:
    """Complete ``req``; sleep between tests (0: block in ``Wait``).

    The sleep starts at 20 us and doubles up to ``poll_s``: a collective that completes in
    microseconds (the payload once every rank is ready) is not delayed by a whole poll
    interval, while a long wait (ranks still training) still costs only ~1/poll_s wakeups/s.
    """
    watch = _watch  # rank 0: also probe for fault notes from failing ranks
    if poll_s <= 0 and watch is None:
        req.Wait()
        return
    nap = min(poll_s, 2e-5)
    while not req.Test():
        if watch is not None:
            watch.check()
        time.sleep(nap)
        nap = min(poll_s, 2.0 * nap)


def _displs(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _gather_view(msgs: list[np.ndarray]) -> tuple[object, MPI.Datatype | None]:
    """The send buffer of all of a rank's messages, without copying them together.

    One message (the usual case) is sent as is; several go as one MPI hindexed datatype over
    their addresses (absolute, from ``MPI.BOTTOM``), so MPI reads them in place. The caller
    frees the returned datatype after the collective.
    """
    if not msgs:
        return np.zeros(0, np.uint8), None
    if len(msgs) == 1:
        return np.ascontiguousarray(msgs[0], dtype=np.uint8), None
    if not all(m.dtype == np.uint8 and m.flags.c_contiguous for m in msgs):
        return np.concatenate([np.asarray(m, np.uint8).reshape(-1) for m in msgs]), None
    dt = MPI.BYTE.Create_hindexed([m.size for m in msgs],
                                  [MPI.Get_address(m) for m in msgs]).Commit()
    return [MPI.BOTTOM, 1, dt], dt


@dataclass
class GatherStats:
    wait_s: float  # until every rank had posted its sizes (i.e. finished local work)
    transfer_s: float  # payload Gatherv after that


class Transport:
    """Collectives of one run over a client :class:`Placement`."""

    def __init__(self, comm: MPI.Intracomm, placement: Placement, poll_s: float) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.placement = placement
        self.counts = placement.counts
        self.poll_s = poll_s
        self._bufs: dict[str, np.ndarray] = {}
        if self.rank == 0:
            watch_faults(comm)

    def _buffer(self, key: str, nbytes: int) -> np.ndarray:
        """A reused receive buffer (grow-only): first-touch page faults of a fresh array cost
        more than the transfer itself at tens of MB (docs/PERFORMANCE.md)."""
        buf = self._bufs.get(key)
        if buf is None or buf.size < nbytes:
            buf = self._bufs[key] = np.empty(max(nbytes, int(1.25 * (0 if buf is None
                                                                      else buf.size))), np.uint8)
        return buf[:nbytes]

    # -- update messages ------------------------------------------------------------------
    def gather_messages(self, msgs: list[np.ndarray]) -> tuple[list[np.ndarray], GatherStats]:
        """Gather per-client uint8 messages to rank 0, in rank (= client id) order.

        Sizes go first (Gatherv of int64), then all bytes in one Gatherv: one message per rank.
        Returns the list of messages on rank 0 and ``[]`` elsewhere: views into a reused
        buffer, valid until the next ``gather_messages`` (copy what must outlive the round).
        """
        root = self.rank == 0
        t0 = time.perf_counter()
        wait(self.comm.Ibarrier(), self.poll_s)  # sleeping: ranks still training
        sizes = np.asarray([m.size for m in msgs], dtype=np.int64)
        all_sizes = np.zeros(int(self.counts.sum()), dtype=np.int64) if root else None
        wait(self.comm.Igatherv(sizes, [all_sizes, (self.counts, _displs(self.counts)),
                                        MPI.INT64_T] if root else None), 0.0)
        t1 = time.perf_counter()
        send, dtype = _gather_view(msgs)
        if root:
            per_rank = np.asarray([s.sum() for s in np.split(all_sizes,
                                   np.cumsum(self.counts)[:-1])], dtype=np.int64)
            recv = self._buffer("gather", int(all_sizes.sum()))
            spec = [recv, (per_rank, _displs(per_rank)), MPI.BYTE]
        else:
            spec = None
        try:
            wait(self.comm.Igatherv(send, spec), 0.0)  # every rank is here: no sleeping
        finally:
            if dtype is not None:
                dtype.Free()
        t2 = time.perf_counter()
        out = np.split(recv, np.cumsum(all_sizes)[:-1]) if root else []
        return out, GatherStats(t1 - t0, t2 - t1)

    def broadcast(self, msg: np.ndarray | None) -> np.ndarray:
        """Rank 0's uint8 message to every rank (size first, then the bytes).

        Elsewhere the result is a view into a reused buffer, valid until the next call."""
        size = np.array([msg.size if self.rank == 0 else 0], dtype=np.int64)
        wait(self.comm.Ibcast(size, root=0), self.poll_s)  # sleeping: the server aggregates
        buf = msg if self.rank == 0 else self._buffer("bcast", int(size[0]))
        wait(self.comm.Ibcast(buf, root=0), 0.0)  # the root is sending: no sleeping
        return buf

    # -- telemetry (not counted as payload) ----------------------------------------------
    def gather_rows(self, rows: np.ndarray, width: int) -> np.ndarray | None:
        """Gather float64 rows (one per local client) to rank 0 as an array [clients, width]."""
        rows = np.ascontiguousarray(rows, dtype=np.float64).reshape(-1, width)
        if self.rank == 0:
            out = np.empty((int(self.counts.sum()), width), dtype=np.float64)
            c = self.counts * width
            spec = [out, (c, _displs(c)), MPI.DOUBLE]
        else:
            out, spec = None, None
        wait(self.comm.Igatherv(rows, spec), self.poll_s)
        return out

    def gather_rank_values(self, values: np.ndarray) -> np.ndarray | None:
        """Gather a fixed-length float64 vector from every rank: [world, n] on rank 0."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        out = (np.empty((self.comm.Get_size(), values.size), dtype=np.float64)
               if self.rank == 0 else None)
        wait(self.comm.Igather(values, out), self.poll_s)
        return out


def bcast_bytes(comm: MPI.Intracomm, data: bytes | None, poll_s: float = 0.005) -> bytes:
    """Broadcast a byte string from rank 0 (control plane, e.g. the resolved config); the
    waiting ranks sleep-poll, leaving the cores to rank 0's checks."""
    size = np.array([len(data) if data is not None else 0], dtype=np.int64)
    wait(comm.Ibcast(size, root=0), poll_s)
    buf = (np.frombuffer(data, dtype=np.uint8).copy() if comm.Get_rank() == 0
           else np.empty(int(size[0]), dtype=np.uint8))
    wait(comm.Ibcast(buf, root=0), poll_s)
    return buf.tobytes()


def gather_text(comm: MPI.Intracomm, text: str) -> list[str] | None:
    """Gather one UTF-8 string per rank to rank 0 (startup checks)."""
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    size = np.array([data.size], dtype=np.int64)
    sizes = np.empty(comm.Get_size(), dtype=np.int64) if comm.Get_rank() == 0 else None
    comm.Gather(size, sizes, root=0)
    if comm.Get_rank() == 0:
        recv = np.empty(int(sizes.sum()), dtype=np.uint8)
        comm.Gatherv(data, [recv, (sizes, _displs(sizes)), MPI.BYTE], root=0)
        return [b.tobytes().decode() for b in np.split(recv, np.cumsum(sizes)[:-1])]
    comm.Gatherv(data, None, root=0)
    return None
