"""The analysis subcommands of ``fedkd-mpi``: report, compare, export (no MPI, no torch; the
sweep, which launches jobs, is fedkd_mpi/sweep.py beside the API).

Errors about the input files (missing, not a run file, unsupported format_version, unknown
config key or metric) print one line on stderr and return exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

COMMANDS = ("report", "compare", "export")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the report / compare / export subparsers to ``fedkd-mpi``'s parser."""
    s = sub.add_parser("report", help="summary table and figures of one run file "
                       "(works on live and killed runs)")
    s.add_argument("run", help="run file (HDF5)")
    s.add_argument("--out", type=Path, default=None,
                   help="figure folder (default: RUN without .h5 + '_report')")
    s.add_argument("--format", choices=("png", "pdf"), default="png", dest="fmt")
    s.add_argument("--no-figures", action="store_true", help="terminal summary only")
    s.add_argument("--baseline", default=None, metavar="BASE.h5",
                   help="also the paired per-client difference against this run (same "
                        "clients, each run's last evaluated round), for every model both have")
    s.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                   help="live view: redo the summary and figures every SECONDS while the run "
                        "is in progress (stops when it ends or looks killed)")

    s = sub.add_parser("compare", help="runs grouped by config keys, seeds folded into "
                       "mean ± std (Table 1 shape), overlaid metric-vs-MB curves")
    s.add_argument("runs", nargs="+", help="run files (HDF5)")
    s.add_argument("--group-by", "--key", default="algorithm", dest="group_by",
                   help="dotted config key, or several comma-separated (default: algorithm; "
                        "e.g. model.mentee.layers, or algorithm,svd.t_end)")
    s.add_argument("--metric", default="auto",
                   help="for the curves and --target: auto (the run's own model: mentor if it "
                        "has one, else mentee), mentor, mentee, NAME, mentor_NAME or "
                        "mentee_NAME (NAME: the file's metric_name / metric_names)")
    s.add_argument("--target", type=float, default=None,
                   help="also report the MB per client needed to reach this metric value")
    s.add_argument("--baseline", default=None, metavar="GROUP",
                   help="also every group minus this group (e.g. local), paired by seed over "
                        "the same clients, with a 95 %% t-interval over seeds")
    s.add_argument("--out", type=Path, default=None,
                   help="write compare.md, compare.csv, compare_runs.csv and the figure here")
    s.add_argument("--format", choices=("png", "pdf"), default="png", dest="fmt")

    s = sub.add_parser("export", help="tidy tables of one run as CSV or Parquet files")
    s.add_argument("run", help="run file (HDF5)")
    s.add_argument("--to", choices=("csv", "parquet"), required=True)
    s.add_argument("--out", type=Path, default=None,
                   help="folder (default: RUN without .h5 + '_export')")



def _default_out(run: str, suffix: str) -> Path:
    p = Path(run)
    return p.with_name(p.stem + suffix)


def main(args: argparse.Namespace, command: Callable[[argparse.Namespace], int] | None = None
         ) -> int:
    """Run ``command`` (default: the analysis subcommand named by ``args.command``); a bad
    input file or key is one line on stderr and exit code 2."""
    from fedkd_mpi.analysis.reader import RunFileError

    try:
        return (command or _dispatch)(args)
    except (RunFileError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fedkd-mpi {args.command}: {msg}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    import time

    from fedkd_mpi.analysis import report
    from fedkd_mpi.analysis.reader import load

    base = load(args.baseline) if args.baseline else None
    while True:
        run = load(args.run)
        if args.watch:
            print(f"=== {time.strftime('%H:%M:%S')}  {run.summary.rounds_completed} rounds")
        print(report.text(run, base))
        if not args.no_figures:
            out = args.out or _default_out(args.run, "_report")
            paths = report.figures(run, out, args.fmt)
            print(f"\nfigures ({len(paths)}) in {out}: " + ", ".join(p.name for p in paths)
                  if paths else "\nno figures (no completed round)", flush=True)
        live = run.summary.status == "running" and "still running" in run.summary.status_note
        if not args.watch or not live:
            return 0
        time.sleep(args.watch)


def _dispatch(args: argparse.Namespace) -> int:
    from fedkd_mpi.analysis.reader import load

    if args.command == "report":
        return _report(args)
    if args.command == "compare":
        from fedkd_mpi.analysis.compare import main_compare

        main_compare(args.runs, args.group_by, args.metric, args.target, args.out, args.fmt,
                     args.baseline)
        return 0
    if args.command == "export":
        from fedkd_mpi.analysis.export import export

        run = load(args.run)
        out = args.out or _default_out(args.run, "_export")
        for p in export(run, args.to, out):
            print(p)
        return 0
    raise AssertionError(args.command)
