"""Run the quickstart config as FedKD, mentee FedAvg, mentor FedAvg and local-only, then print
one table measured from the four HDF5 files (metrics and bytes actually handed to MPI).

    .venv/bin/python benchmarks/quickstart_comparison.py [--ranks 4] [key=value ...]

Runs one job after another (about 2 minutes each on 2 cores); extra key=value overrides apply
to all four runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import h5py
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VARIANTS = {
    "fedkd": ["algorithm=fedkd"],
    "fedavg-mentee": ["algorithm=fedavg", "fedavg.model=mentee"],
    "fedavg-mentor": ["algorithm=fedavg", "fedavg.model=mentor"],
    "local-mentor": ["algorithm=local", "local.model=mentor"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--config", default=str(ROOT / "configs/scratch.yaml"))
    ap.add_argument("--outdir", default=str(ROOT / "runs/comparison"))
    ap.add_argument("--reuse", action="store_true", help="skip runs whose file is completed")
    args, overrides = ap.parse_known_args()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    files = {}
    for name, extra in VARIANTS.items():
        path = out / f"{name}.h5"
        files[name] = path
        if args.reuse and path.exists():
            with h5py.File(path, "r") as f:
                if f.attrs.get("status") == "completed":
                    continue
        cmd = [str(BIN / "mpiexec"), "-n", str(args.ranks), str(BIN / "fedkd-mpi"), "run",
               args.config, "--overwrite", f"output={path}", "runtime.progress=false",
               *extra, *overrides]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = []
    ref = {}
    for name, path in files.items():
        with h5py.File(path, "r") as f:
            up = f["clients/bytes_up"][:].sum(0).mean()
            down = f["clients/bytes_down"][:].sum(0).mean()
            ref[name] = up
            rows.append([name, _last(f, "mentor_metric"), _last(f, "mentee_metric"),
                         up / 1e6, down / 1e6, f["rounds/round"].shape[0],
                         f["rounds/wall_time_s"][:].sum()])
    for r in rows:
        r.insert(5, _ratio(ref["fedavg-mentee"], ref[r[0]]))
        r.insert(6, _ratio(ref["fedavg-mentor"], ref[r[0]]))
    print(tabulate(rows, headers=["run", "mentor acc", "mentee acc", "MB up/client",
                                  "MB down/client", "up: x below mentee FedAvg",
                                  "up: x below mentor FedAvg", "rounds", "wall s"],
                   floatfmt=".4f", tablefmt="github"))
    return 0


def _last(f: h5py.File, name: str) -> float:
    return float(f[f"rounds/{name}"][-1])


def _ratio(ref: float, x: float) -> str:
    return "n/a" if x == 0 else f"{ref / x:.1f}"


if __name__ == "__main__":
    sys.exit(main())
