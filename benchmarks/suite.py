"""Run a named comparison suite through mpiexec and build its table and figure.

    .venv/bin/python benchmarks/suite.py baselines            # configs/suites/baselines.yaml
    .venv/bin/python benchmarks/suite.py baselines --full     # configs/suites/baselines_full.yaml
    .venv/bin/python benchmarks/suite.py baselines --table    # table + figure from existing files

A suite file lists a base config, common ``key=value`` overrides, seeds, and named runs (each
with its own overrides). Every (run, seed) is one job of ``fedkd-mpi sweep``'s runner
(fedkd_mpi/sweep.py: ``mpiexec -n RANKS python -m fedkd_mpi run``) writing one HDF5
file ``<out>/<run>-s<seed>.h5`` (log and config in ``<out>/logs/``). A file whose ``status``
attribute is ``completed`` counts as done and is never rerun, so an interrupted suite resumes
where it stopped; any other is rerun from scratch. The table is built from the HDF5 files
only: final metric mean ± std over seeds, MB per client up and down (headers included, as
handed to MPI), the reduction of total bytes against the reference run (mentor FedAvg), and
the MB per client needed to reach the target metric: per seed by
``fedkd_mpi.analysis.compare.mb_to_target`` (the figure ``fedkd-mpi compare --target`` and
the sweep summary print), the mean over the seeds that reach it.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from fedkd_mpi.analysis.compare import MetricSpec, mb_to_target
from fedkd_mpi.analysis.reader import load
from fedkd_mpi.api import Config
from fedkd_mpi.sweep import Job, execute, file_state

ROOT = Path(__file__).resolve().parents[1]


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
    return file_state(path)[0] == "completed"


def jobs(s: Suite) -> list[Job]:
    base = Path(s.base) if Path(s.base).is_absolute() else ROOT / s.base
    return [Job(f"{run} seed {seed}", f"{run}-s{seed}",
                Config.load(base, [*s.overrides, *s.runs[run], f"seed={seed}"]), s.out.resolve(),
                s.ranks)
            for run in s.runs for seed in s.seeds]


def run_all(s: Suite, dry: bool) -> int:
    """Every (run, seed) not completed yet, through the sweep runner; returns the failures."""
    state = execute(jobs(s), overwrite=True, dry_run=dry)
    return sum(v != "completed" for v in state.values())


# ---------------------------------------------------------------------------------------
# table and figure, from the HDF5 files only
# ---------------------------------------------------------------------------------------
@dataclass
class Curve:
    metric: np.ndarray  # per round
    cum_mb: np.ndarray  # cumulative MB per client, up + down
    up_mb: float
    down_mb: float
    run: object = None  # the loaded run (fedkd_mpi.analysis.Run)
    which: str = "auto"


def read_curve(path: Path, which: str) -> Curve:
    run = load(path)
    col, _ = MetricSpec.parse(which).column(run)
    s = run.summary
    return Curve(run.rounds[col].to_numpy(float), run.rounds["cum_mb_per_client"].to_numpy(float),
                 s.mb_up_per_client, s.mb_down_per_client, run, which)


def to_target(curves: list[Curve], target: float) -> tuple[float, list[int]]:
    """Mean over the seeds that reach ``target`` of their MB per client to it (compare's
    mb_to_target, per seed), and those seeds' rounds."""
    hits = [mb_to_target(c.run, target, c.which) for c in curves]
    hits = [(mb, int(r)) for mb, r in hits if math.isfinite(mb)]
    return (float(np.mean([mb for mb, _ in hits])) if hits else math.nan, [r for _, r in hits])


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
    ref_mb, _ = to_target(ref, target)
    rows = []
    for run, cs in data.items():
        final = np.array([c.metric[-1] for c in cs])
        up, down = np.mean([c.up_mb for c in cs]), np.mean([c.down_mb for c in cs])
        mb, rnds = to_target(cs, target)
        reached = len(rnds)
        sd = final.std(ddof=1) if len(cs) > 1 else 0.0
        rows.append([
            run, f"{len(cs)}", f"{final.mean():.4f} ± {sd:.4f}",
            f"{up:.4f}", f"{down:.4f}", f"{ref_total / (up + down):.1f}x" if up + down else "n/a",
            "not reached" if math.isnan(mb) else f"{mb:.4f}",
            ", ".join(map(str, rnds)) or "-",
            "-" if math.isnan(mb) or math.isnan(ref_mb) else f"{ref_mb / mb:.1f}x",
            f"{reached}/{len(cs)}",
        ])
    head = ["run", "seeds", "final metric (mean ± std)", "MB up/client", "MB down/client",
            "total bytes: x below ref", f"MB/client to {target:.4f}", "round (per seed)",
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
