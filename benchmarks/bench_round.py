"""Round-time breakdown of a real job, from its HDF5 timing datasets.

Runs ``mpiexec -n RANKS fedkd-mpi run CONFIG`` (a real job) once per variant and prints, per
variant, the median over rounds of: wall time of the round (rank 0), slowest client's local
training, codec (client encode + decode of the slowest rank, server decode + average +
re-encode + apply), communication (payload Gatherv after every rank posted its sizes, plus the
Bcast), and the codec + comm share of the round. ``--compare`` also runs the codec with
``svd_method=full server_path=dense`` and reports whether metrics and ranks changed.

    nice -n 10 .venv/bin/python benchmarks/bench_round.py --rounds 3 --compare
    .venv/bin/python benchmarks/bench_round.py --from-h5 runs/paper/fedkd2_s0.h5   # existing runs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_job(config: str, ranks: int, out: Path, overrides: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "fedkd-mpi"), "run", config,
           f"output={out}", "runtime.progress=false", "--overwrite", *overrides]
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"job failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")


def breakdown(path: Path) -> dict[str, object]:
    with h5py.File(path, "r") as f:
        r = {k: f[f"rounds/{k}"][()] for k in ("wall_time_s", "train_time_s", "codec_time_s",
                                               "comm_time_s", "server_time_s",
                                               "mentor_metric", "mentee_metric", "bytes_up")}
        timing = {k: f[f"timing/{k}"][()] for k in f["timing"]}
        rank_up, rank_down = f["layers/rank_up"][()], f["layers/rank_down"][()]
    share = (r["codec_time_s"] + r["comm_time_s"]) / r["wall_time_s"]
    return dict(r=r, timing=timing, share=share, rank_up=rank_up, rank_down=rank_down)


def show(tag: str, b: dict) -> None:
    r, t = b["r"], b["timing"]
    med = {k: float(np.median(v)) for k, v in r.items()}
    print(f"\n[{tag}] rounds: {len(r['wall_time_s'])}")
    print(f"  per round (median over rounds): wall {med['wall_time_s']:.3f} s | train (slowest "
          f"client rank) {med['train_time_s']:.3f} s | codec {med['codec_time_s'] * 1e3:.1f} ms "
          f"(server part {med['server_time_s'] * 1e3:.1f} ms) | comm "
          f"{med['comm_time_s'] * 1e3:.2f} ms")
    print(f"  codec + comm share of the round: median {100 * np.median(b['share']):.2f} % "
          f"(min {100 * b['share'].min():.2f} %, max {100 * b['share'].max():.2f} %)")
    print("  /timing medians per rank [s]: " + "; ".join(
        f"{k}=" + ",".join(f"{x:.3f}" for x in np.median(v, axis=0)) for k, v in t.items()))
    print(f"  final mentor {r['mentor_metric'][-1]:.4f} mentee {r['mentee_metric'][-1]:.4f}, "
          f"bytes up {int(r['bytes_up'].sum())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/scratch.yaml")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", action="store_true",
                    help="also run svd_method=full server_path=dense and compare")
    ap.add_argument("--from-h5", nargs="+", type=Path, metavar="RUN.h5",
                    help="no job: break down existing run files (e.g. runs/paper/*.h5)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.from_h5:
        for path in a.from_h5:
            show(str(path), breakdown(path))
        return
    variants = {"default (svd_method=auto, server_path=auto)": []}
    if a.compare:
        variants["svd_method=full, server_path=dense"] = ["svd.method=full",
                                                           "svd.server_path=dense"]
    res = {}
    for i, (tag, extra) in enumerate(variants.items()):
        out = ROOT / "runs" / f"bench_round_{i}.h5"
        run_job(a.config, a.ranks, out, [f"train.rounds={a.rounds}", *a.overrides, *extra])
        res[tag] = breakdown(out)
        show(tag, res[tag])
    if a.compare:
        (ta, ba), (tb, bb) = res.items()
        same_rank = (np.array_equal(ba["rank_up"], bb["rank_up"])
                     and np.array_equal(ba["rank_down"], bb["rank_down"]))
        dm = [float(np.max(np.abs(ba["r"][k] - bb["r"][k])))
              for k in ("mentor_metric", "mentee_metric")]
        print(f"\n{ta} vs {tb}: ranks identical: {same_rank}; max |metric difference| "
              f"mentor {dm[0]:.6f}, mentee {dm[1]:.6f}")


if __name__ == "__main__":
    main()
