"""Peak RSS per client rank vs number of clients, with and without ``runtime.resident_clients``.

    .venv/bin/python benchmarks/scale_residency.py [--ranks 4] [--out runs/scale]

Runs the tiny test config with a 4-layer/128-wide mentor (about 2.2 M parameters with Adam
state: ~27 MB of private state per client) for 2 rounds of 2 local steps, as
15 and 60 clients over 3 client ranks, and prints the per-rank peak RSS recorded in
``/memory/rss_mb`` (the high-water mark of each process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = ("model.mentor.layers=4", "model.mentor.hidden=128", "model.mentor.heads=4",
         "model.mentor.ffn=256", "data.vocab_size=8192", "data.max_samples=3000",
         "train.rounds=2", "train.local_steps=2")
CASES = (("15 clients, all resident", 15, None), ("60 clients, all resident", 60, None),
         ("15 clients, resident_clients=5", 15, 5), ("60 clients, resident_clients=5", 60, 5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--out", default="runs/scale")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print("| case | peak RSS per client rank (MiB) | server (MiB) | wall (s) |")
    print("|---|---|---|---|")
    for label, n, resident in CASES:
        h5 = out / f"n{n}_r{resident}.h5"
        cmd = [str(BIN / "mpiexec"), "-n", str(args.ranks), str(BIN / "fedkd-mpi"), "run",
               str(ROOT / "tests/tiny.yaml"), f"output={h5}", f"data.num_clients={n}", *MODEL,
               "--overwrite"]
        if resident is not None:
            cmd.append(f"runtime.resident_clients={resident}")
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if res.returncode != 0:
            print(res.stdout, res.stderr, file=sys.stderr)
            return 1
        with h5py.File(h5, "r") as f:
            rss = f["memory/rss_mb"][:].max(0)
        ranks = ", ".join(f"{x:.0f}" for x in rss[1:])
        print(f"| {label} | {ranks} | {rss[0]:.0f} | {wall:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
