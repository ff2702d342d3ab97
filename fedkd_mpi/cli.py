"""Command line: ``fedkd-mpi run|validate CONFIG [key=value ...]``; ``fedkd-mpi
report|compare|export RUN.h5 ...`` (analysis of run files, no MPI); ``fedkd-mpi repair
RUN.h5`` (a file whose writer was killed, made readable by any HDF5 reader)."""

from __future__ import annotations

import argparse
import os
import sys

from fedkd_mpi import __version__, sweep
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
    sweep.add_parser(sub)  # a grid of runs (launches mpiexec jobs)
    s = sub.add_parser("repair", help="make the file of a killed run readable by any HDF5 "
                       "reader (clears the SWMR flags it left; keeps every complete round; "
                       "status failed)")
    s.add_argument("run", help="run file (HDF5)")
    s.add_argument("--force", action="store_true",
                   help="repair even when the writer, on another host, looks alive (its "
                   "heartbeat is recent)")
    sub.add_parser("plugins", help="list every registered name per axis: origin and settings")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "plugins":
        from fedkd_mpi.catalog import main as catalog

        return catalog()
    if args.command in (*analysis_commands.COMMANDS, "repair", "sweep"):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "repair":
            return _leased(args.run, args.force)
        return analysis_commands.main(args, sweep.main if args.command == "sweep" else None)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*args.overrides, *extra]  # key=value given after --overwrite
    if args.command == "validate":
        from fedkd_mpi.config import ConfigError, load_config

        try:
            cfg = load_config(args.config, args.overrides)
            if not args.resume_state:
                from fedkd_mpi.runtime.preflight import preflight
                from fedkd_mpi.storage.paths import check_written_paths, spill_dir_error

                check_written_paths(cfg, overwrite=True)  # existence is run's business
                # the spill directory is node-local: this host's here, each rank's at run
                cap = cfg.runtime.resident_clients
                spill = spill_dir_error(cfg, cap + 1, "this host") if cap else ""
                if spill:
                    raise ConfigError(spill)
                preflight(cfg)
            state = _resume_state(cfg) if args.resume_state else ""
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(state or cfg.to_yaml().rstrip("\n"))
        return 0
    return _run(args)


def _resume_state(cfg) -> str:
    """``complete`` when the output file is a completed run of this many rounds (nothing to
    do), ``resume`` when it and a checkpoint manifest exist, else ``new``; ConfigError (one
    line, in bounded time) when the output file is damaged, empty or not HDF5."""
    from pathlib import Path

    from fedkd_mpi.config import ConfigError, resume_state
    from fedkd_mpi.storage.h5 import open_live, run_state
    from fedkd_mpi.storage.reading import UnreadableRunFile, read_error, walk

    if Path(cfg.output).is_file():
        try:
            with open_live(cfg.output) as f:
                walk(f, data=True)  # what a resume would copy
                status = run_state(f)["status"]
                rows = len(f["rounds/round"]) if "rounds/round" in f else -1
            if status == "completed" and rows == cfg.train.rounds:
                return "complete"
        except UnreadableRunFile as exc:  # damaged, empty: neither resumed nor replaced
            raise ConfigError(f"fedkd-mpi validate: {exc}") from None
        except (OSError, RuntimeError) as exc:  # a read of an open file failed: damaged
            raise ConfigError(f"fedkd-mpi validate: {read_error(cfg.output, exc)}") from None
        except (KeyError, ValueError):  # not a run file: run says so
            pass
    return resume_state(cfg)


def _leased(path: str, force: bool) -> int:
    """``repair`` under the output's lease: refused (one line, exit 2) while a live job owns
    the file, from any host (storage/lease.py)."""
    from pathlib import Path

    from fedkd_mpi.storage.lease import Lease, LeaseHeld

    if not Path(path).is_file():
        return _repair(path, force)
    lease = Lease(path, "repair")
    try:
        lease.acquire()
    except LeaseHeld as exc:
        print(f"fedkd-mpi repair: {exc}", file=sys.stderr)
        return 2
    except OSError:  # a directory that cannot hold the lease cannot hold the repair either
        return _repair(path, force)
    try:
        return _repair(path, force)
    finally:
        lease.release()


def _repair(path: str, force: bool) -> int:
    """``fedkd-mpi repair RUN.h5``: exit 0 when the file opens with any HDF5 reader
    afterwards (repaired, or nothing to do), 2 when it cannot or must not be repaired."""
    from pathlib import Path

    from fedkd_mpi.storage.disk import StorageError
    from fedkd_mpi.storage.h5 import open_live
    from fedkd_mpi.storage.liveness import complete_rounds, judge_writer, needs_repair, repair
    from fedkd_mpi.storage.reading import UnreadableRunFile, read_error

    p = Path(path)
    say = f"fedkd-mpi repair: {p}"
    if not p.is_file():
        print(f"{say}: no such file", file=sys.stderr)
        return 2
    try:
        if not needs_repair(p):
            print(f"{say}: opens with any HDF5 reader already; nothing to repair")
            return 0
        with open_live(p) as f:
            v = judge_writer(f, p)
            rounds = complete_rounds(f)
    except UnreadableRunFile as exc:  # damaged, empty, not HDF5: refused, left as it is
        print(f"fedkd-mpi repair: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, KeyError) as exc:
        print(f"fedkd-mpi repair: {read_error(p, exc)}", file=sys.stderr)
        return 2
    who = f"pid {v.pid} on {v.host}" if v.pid is not None else "its writer"
    if v.alive:
        print(f"{say}: still being written ({who} is alive); stop the run first (SIGTERM "
              "checkpoints it)", file=sys.stderr)
        return 2
    if v.alive is None and v.likely_alive and not force:
        print(f"{say}: the writer ({who}) may still be running: last {v.source} "
              f"{v.age_s or 0:.0f} s ago, rounds take up to {v.limit_s:.0f} s by the "
              "heartbeat rule; pass --force if it is dead", file=sys.stderr)
        return 2
    note = (f"the run ended without closing its file after {rounds} rounds (the writer, {who}, "
            f"was killed or lost its node; last {v.source} {v.age_s or 0:.0f} s before the "
            "repair); repaired by fedkd-mpi repair")
    try:
        kept = repair(p, note)
    except UnreadableRunFile as exc:
        print(f"fedkd-mpi repair: {exc}", file=sys.stderr)
        return 2
    except (StorageError, OSError, ValueError) as exc:
        print(f"{say}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    print(f"{say}: {kept} complete rounds kept; it opens with any HDF5 reader now (status "
          "failed unless it had ended)")
    return 0


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from fedkd_mpi.runtime.stop import StopFlag

    stop = StopFlag().install()  # before MPI, torch and h5py load: a stop is never a crash
    from mpi4py import MPI

    from fedkd_mpi.runtime.launch import launch

    comm = MPI.COMM_WORLD
    try:
        code = launch(args.config, args.overrides, args.overwrite, comm, resume=args.resume,
                      stop=stop)
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        from fedkd_mpi.runtime.faults import abort_job

        # traceback in one write, a pause, rank 0 told (it marks the file failed), MPI_Abort
        abort_job(comm, exc)
    # the run is over: a late stop signal (a second SIGTERM, mpiexec forwarding one) must not
    # kill a rank inside MPI_Finalize and turn exit status 0 or 3 into a 'bad termination'
    import signal

    for s in StopFlag.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    return code
