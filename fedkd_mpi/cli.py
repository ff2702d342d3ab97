"""Command line: ``fedkd-mpi run|validate CONFIG [key=value ...]``; ``fedkd-mpi
report|compare|export RUN.h5 ...`` (analysis of run files, no MPI)."""

from __future__ import annotations

import argparse
import os
import sys

from fedkd_mpi import __version__
from fedkd_mpi.analysis import commands as analysis_commands


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedkd-mpi", description=__doc__)
    p.add_argument("--version", action="version", version=f"fedkd-mpi {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "run a job (under mpiexec: rank 0 server, others clients)"),
                        ("validate", "check a config and print it resolved, without running")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("config", help="YAML file (configs/*.yaml)")
        s.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides, e.g. train.rounds=3 svd.t_start=0.9")
        if name == "validate":
            s.add_argument("--resume-state", action="store_true",
                           help="print only 'resume' (output file + checkpoint exist) or 'new' "
                           "(used by jobs/slurm_*.sh)")
        if name == "run":
            s.add_argument("--overwrite", action="store_true",
                           help="replace an existing output file")
            s.add_argument("--resume", action="store_true",
                           help="continue the output file from its last checkpoint "
                           "(runtime.checkpoint_dir, default <output>.ckpt)")
    analysis_commands.add_parsers(sub)  # report, compare, export (no MPI)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in analysis_commands.COMMANDS:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return analysis_commands.main(args)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*args.overrides, *extra]  # key=value given after --overwrite
    if args.command == "validate":
        from fedkd_mpi.config import ConfigError, load_config, resume_state

        try:
            cfg = load_config(args.config, args.overrides)
            if not args.resume_state:
                from fedkd_mpi.runtime.preflight import preflight

                preflight(cfg)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(resume_state(cfg) if args.resume_state else cfg.to_yaml().rstrip("\n"))
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mpi4py import MPI

    from fedkd_mpi.runtime.launch import launch

    comm = MPI.COMM_WORLD
    try:
        return launch(args.config, args.overrides, args.overwrite, comm, resume=args.resume)
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        from fedkd_mpi.runtime.faults import abort_job

        # traceback in one write, a pause, rank 0 told (it marks the file failed), MPI_Abort
        abort_job(comm, exc)
