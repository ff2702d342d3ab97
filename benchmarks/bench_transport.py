"""Transport throughput: the package's gather/broadcast against bare mpi4py Gatherv/Bcast.

Each client rank (1..N-1) sends one message of S bytes to rank 0; rank 0 then broadcasts one
message of S bytes. The package path is ``Transport.gather_messages`` (sizes Igatherv + payload
Igatherv, sleep-poll waits) and ``Transport.broadcast`` (size Ibcast + payload Ibcast); the
bare path is one blocking ``Gatherv`` with known counts and one ``Bcast`` with a known size.
Every operation starts after a Barrier; its time is the slowest rank's. Paths alternate within
each repetition; medians over repetitions, and the median of per-repetition ratios.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/mpiexec -n 4 .venv/bin/python \\
        benchmarks/bench_transport.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from mpi4py import MPI

from fedkd_mpi.comm.mpi import Transport
from fedkd_mpi.comm.placement import Placement

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def slowest(fn, *args) -> float:
    comm.Barrier()
    t = time.perf_counter()
    fn(*args)
    dt = np.array([time.perf_counter() - t])
    out = np.zeros(1)
    comm.Allreduce(dt, out, op=MPI.MAX)
    return float(out[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+",
                    default=[16_384, 262_144, 1 << 20, 4 << 20, 16 << 20, 64 << 20])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--poll-ms", type=float, nargs="+", default=[2.0, 0.0])
    a = ap.parse_args()
    placement = Placement(size - 1, size)  # one client per client rank
    transports = {p: Transport(comm, placement, p / 1000.0) for p in a.poll_ms}
    if rank == 0:
        print(f"{size} ranks ({size - 1} clients), MPI: "
              f"{MPI.Get_library_version().splitlines()[0].strip()}; MB/s = payload bytes moved "
              f"/ slowest rank's time; median [min-max] over {a.reps} reps")
    for s in a.sizes:
        msg = np.full(s, rank % 251, np.uint8)
        recv = np.empty(s * (size - 1), np.uint8) if rank == 0 else None
        rc = np.array([0] + [s] * (size - 1))
        rd = np.concatenate([[0], np.cumsum(rc)[:-1]])
        bbuf = np.full(s, 7, np.uint8) if rank == 0 else np.empty(s, np.uint8)
        res: dict[str, list[float]] = {}

        gspec = [recv, (rc, rd), MPI.BYTE] if rank == 0 else None
        mine = msg[:0] if rank == 0 else msg
        pkg_msgs = [] if rank == 0 else [msg]
        pkg_b = bbuf if rank == 0 else None
        for _ in range(a.reps):
            res.setdefault("bare gather", []).append(slowest(comm.Gatherv, mine, gspec, 0))
            res.setdefault("bare bcast", []).append(slowest(comm.Bcast, bbuf, 0))
            for p, tr in transports.items():
                res.setdefault(f"pkg gather poll={p}ms", []).append(
                    slowest(tr.gather_messages, pkg_msgs))
                res.setdefault(f"pkg bcast poll={p}ms", []).append(slowest(tr.broadcast, pkg_b))
        if rank == 0:
            moved = s * (size - 1)
            print(f"\nmessage {s / 2**20:.3f} MiB per client ({moved / 2**20:.3f} MiB per op):")
            for k, ts in res.items():
                t = np.array(ts)
                base = np.array(res["bare gather" if "gather" in k else "bare bcast"])
                ratio = np.median(base / t)
                mbs = moved / t / 1e6
                print(f"  {k:24s} {np.median(mbs):9.1f} MB/s [{mbs.min():.1f}-{mbs.max():.1f}]"
                      f"  {np.median(t) * 1e3:8.3f} ms  = {100 * ratio:5.1f} % of bare")


if __name__ == "__main__":
    main()
