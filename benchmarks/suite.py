"""Run a named comparison suite through mpiexec and build its table and figure.

    .venv/bin/python benchmarks/suite.py baselines            # configs/suites/baselines.yaml
    .venv/bin/python benchmarks/suite.py baselines --full     # configs/suites/baselines_full.yaml
    .venv/bin/python benchmarks/suite.py baselines --table    # table + figure from existing files

A suite file lists a base config, common ``key=value`` overrides, seeds, and named runs (each
with its own overrides). Every (run, seed) is one ``mpiexec -n RANKS python -m fedkd_mpi run``
job writing one HDF5 file ``<out>/<run>-s<seed>.h5``. A file whose ``status`` attribute is
``completed`` counts as done and is never rerun, so an interrupted suite resumes where it
stopped. The table is built from the HDF5 files only: final metric mean ± std over seeds, MB
per client up and down (headers included, as handed to MPI), the reduction of total bytes
against the reference run (mentor FedAvg), and the MB per client needed to reach the target
metric on the seed-mean curve.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Suite:
    name: str
    base: str
    overrides: list[str]
    ranks: int
    seeds: list[int]
    runs: dict[str, list[str]]
    reference: str
    metric: str  # mentor | mentee | auto
    target: float | str  # a value, or "ref:<fraction>" of the reference's final mean metric
    out: Path


def load_suite(name: str, full: bool, out: str | None) -> Suite:
    """``name``: a suite under configs/suites (``--full``: its ``_full`` variant) or a path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else (
        ROOT / "configs" / "suites" / f"{name}{'_full' if full else ''}.yaml")
    if not path.is_file():
        sys.exit(f"suite error: {path} not found (suites: "
                 f"{', '.join(p.stem for p in sorted((ROOT / 'configs/suites').glob('*.yaml')))})")
    d = yaml.safe_load(path.read_text())
    runs = {r["name"]: [str(x) for x in r.get("overrides", [])] for r in d["runs"]}
    ref = d.get("reference", next(iter(runs)))
    if ref not in runs:
        sys.exit(f"suite error: reference '{ref}' is not one of the runs ({', '.join(runs)})")
    return Suite(name=path.stem, base=d["base"], overrides=[str(x) for x in d.get("overrides", [])],
                 ranks=int(d.get("ranks", 4)), seeds=[int(s) for s in d.get("seeds", [0])],
                 runs=runs, reference=ref, metric=d.get("metric", "auto"),
                 target=d.get("target", "ref:0.98"),
                 out=Path(out) if out else ROOT / "runs" / "suites" / path.stem)


def h5_path(s: Suite, run: str, seed: int) -> Path:
    return s.out / f"{run}-s{seed}.h5"


def is_done(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("status") == "completed"
    except OSError:
        return False


def command(s: Suite, run: str, seed: int) -> list[str]:
    py = ROOT / ".venv" / "bin" / "python"
    py = py if py.exists() else Path(sys.executable)
    return [str(BIN / "mpiexec"), "-n", str(s.ranks), str(py), "-m", "fedkd_mpi", "run",
            s.base, *s.overrides, *s.runs[run], f"seed={seed}",
            f"output={h5_path(s, run, seed)}", "runtime.progress=false", "--overwrite"]


def run_all(s: Suite, dry: bool) -> int:
    s.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    todo = [(r, sd) for r in s.runs for sd in s.seeds]
    for i, (run, seed) in enumerate(todo, 1):
        out = h5_path(s, run, seed)
        if is_done(out):
            print(f"[{i}/{len(todo)}] {run} seed {seed}: done, skipped", flush=True)
            continue
        cmd = command(s, run, seed)
        print(f"[{i}/{len(todo)}] {shlex.join(cmd)}", flush=True)
        if dry:
            continue
        t = time.time()
        log = out.with_suffix(".log")
        with log.open("w") as fh:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        print(f"    rc={rc}  {time.time() - t:.0f}s  log {log}", flush=True)
        failed += rc != 0 or not is_done(out)
    return failed


# ---------------------------------------------------------------------------------------
# table and figure, from the HDF5 files only
# ---------------------------------------------------------------------------------------
@dataclass
class Curve:
    metric: np.ndarray  # per round
    cum_mb: np.ndarray  # cumulative MB per client, up + down
    up_mb: float
    down_mb: float


def read_curve(path: Path, which: str) -> Curve:
    with h5py.File(path, "r") as f:
        n = int(f.attrs["num_clients"])
        up = f["rounds/bytes_up"][:].astype(np.float64) / n / 1e6
        down = f["rounds/bytes_down"][:].astype(np.float64) / n / 1e6
        mentor, mentee = f["rounds/mentor_metric"][:], f["rounds/mentee_metric"][:]
    if which == "auto":
        which = "mentor" if not np.all(np.isnan(mentor)) else "mentee"
    m = mentor if which == "mentor" else mentee
    return Curve(m, np.cumsum(up + down), float(up.sum()), float(down.sum()))


def mb_to_target(curves: list[Curve], target: float) -> tuple[float, int]:
    """MB per client at the first round where the seed-mean metric reaches ``target``."""
    rounds = min(len(c.metric) for c in curves)
    mean = np.mean([c.metric[:rounds] for c in curves], axis=0)
    mb = np.mean([c.cum_mb[:rounds] for c in curves], axis=0)
    hit = np.flatnonzero(mean >= target)
    return (float(mb[hit[0]]), int(hit[0]) + 1) if hit.size else (math.nan, -1)


def target_value(s: Suite, ref: list[Curve]) -> float:
    """The target metric: a number, or ``ref:<f>`` = f x the reference's final mean metric."""
    if isinstance(s.target, str) and s.target.startswith("ref:"):
        return float(s.target[4:]) * float(np.mean([c.metric[-1] for c in ref]))
    return float(s.target)


def build_table(s: Suite) -> str:
    from tabulate import tabulate

    data: dict[str, list[Curve]] = {}
    for run in s.runs:
        files = [h5_path(s, run, sd) for sd in s.seeds]
        done = [p for p in files if is_done(p)]
        if done:
            data[run] = [read_curve(p, s.metric) for p in done]
    if s.reference not in data:
        return f"(reference run '{s.reference}' has no completed file yet)"
    ref = data[s.reference]
    ref_total = np.mean([c.up_mb + c.down_mb for c in ref])
    target = target_value(s, ref)
    ref_mb, _ = mb_to_target(ref, target)
    rows = []
    for run, cs in data.items():
        final = np.array([c.metric[-1] for c in cs])
        up, down = np.mean([c.up_mb for c in cs]), np.mean([c.down_mb for c in cs])
        mb, rnd = mb_to_target(cs, target)
        reached = sum(bool(np.any(c.metric >= target)) for c in cs)
        sd = final.std(ddof=1) if len(cs) > 1 else 0.0
        rows.append([
            run, f"{len(cs)}", f"{final.mean():.4f} ± {sd:.4f}",
            f"{up:.4f}", f"{down:.4f}", f"{ref_total / (up + down):.1f}x" if up + down else "n/a",
            "not reached" if math.isnan(mb) else f"{mb:.4f}",
            "-" if rnd < 0 else str(rnd),
            "-" if math.isnan(mb) or math.isnan(ref_mb) else f"{ref_mb / mb:.1f}x",
            f"{reached}/{len(cs)}",
        ])
    head = ["run", "seeds", "final metric (mean ± std)", "MB up/client", "MB down/client",
            "total bytes: x below ref", f"MB/client to {target:.4f}", "round",
            "to-target: x below ref", "seeds reaching"]
    return (f"target metric {target:.4f} ({s.target}); reference run: {s.reference}; "
            f"metric: {s.metric}\n\n" + tabulate(rows, head, tablefmt="github",
                                                 disable_numparse=True))


def plot(s: Suite, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for run in s.runs:
        cs = [read_curve(h5_path(s, run, sd), s.metric) for sd in s.seeds
              if is_done(h5_path(s, run, sd))]
        if not cs:
            continue
        r = min(len(c.metric) for c in cs)
        mean = np.mean([c.metric[:r] for c in cs], axis=0)
        mb = np.mean([c.cum_mb[:r] for c in cs], axis=0)
        ax.plot(mb, mean, marker="o", ms=3, label=run)
    ref = [read_curve(h5_path(s, s.reference, sd), s.metric) for sd in s.seeds
           if is_done(h5_path(s, s.reference, sd))]
    if ref:
        ax.axhline(target_value(s, ref), color="k", ls="--", lw=0.8, label="target")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative MB per client (up + down)")
    ax.set_ylabel(f"{s.metric} metric (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", help="suite name (configs/suites/<name>.yaml) or a suite file")
    ap.add_argument("--full", action="store_true", help="the GPU-cluster suite <name>_full.yaml")
    ap.add_argument("--out", help="folder of the run files (default runs/suites/<suite>)")
    ap.add_argument("--table", action="store_true", help="only build table and figure")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--figure", help="PNG path (default <out>/metric_vs_mb.png)")
    args = ap.parse_args(argv)
    s = load_suite(args.name, args.full, args.out)
    failed = 0 if args.table else run_all(s, args.dry_run)
    if args.dry_run:
        return 0
    table = build_table(s)
    (s.out / "table.md").write_text(table + "\n")
    print(table)
    fig = Path(args.figure) if args.figure else s.out / "metric_vs_mb.png"
    plot(s, fig)
    print(f"figure: {fig}")
    if failed:
        print(f"{failed} run(s) failed: rerun the same command to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
