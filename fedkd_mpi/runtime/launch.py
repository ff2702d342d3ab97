"""Job start-up: validate once on rank 0, check every rank, then run or exit cleanly.

Exit codes: 0 success (or ``--resume`` of a complete run: one line, nothing done), 2 bad
input or environment (one line, printed once by rank 0, before any work and before anything
is written), 3 stopped by a signal (during start-up: before anything is written). Any other
failure raises; the CLI turns it into ``MPI_Abort``. torch and the rest of the runtime are
imported only once rank 0's checks passed, so a bad config or output path costs well under a
second per rank.

Every path the run will write is checked here, before any rank trains: the output file, the
checkpoint directory, the TensorBoard directory (rank 0), the spill directory (every rank:
it is node-local); and, once the models are built, the free space for the whole run file.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

from mpi4py import MPI

from fedkd_mpi.comm.mpi import bcast_bytes, gather_text
from fedkd_mpi.config import (
    Config,
    ConfigError,
    checkpoint_dir,
    config_from_yaml_text,
    load_config,
)
from fedkd_mpi.runtime.stop import StopFlag
from fedkd_mpi.storage.lease import Lease, LeaseHeld, hold, release_current
from fedkd_mpi.storage.paths import check_written_paths, output_space_error, spill_dir_error


def take_lease(cfg: Config, command: str) -> Lease:
    """Rank 0: this job's lease on the output (one owner per output across hosts), its
    heartbeat running; ConfigError (one line naming the owner) when a live job holds it."""
    lease = Lease(cfg.output, command, cfg.runtime.lease_timeout_s)
    try:
        lease.acquire()
    except LeaseHeld as exc:
        raise ConfigError(f"launch error: {exc}") from None
    except OSError as exc:  # the output's directory: its own check says what is wrong
        check_written_paths(cfg, True)
        raise ConfigError(f"config error: 'output': cannot create the lease file {lease.path} "
                          f"beside it ({exc.strerror or exc})") from None
    hold(lease)
    return lease.start_heartbeat()


def static_checks(cfg: Config, world_size: int, overwrite: bool) -> None:
    """Checks that need only the config and the world size (rank 0)."""
    if world_size < 2:
        raise ConfigError(
            "launch error: fedkd-mpi run needs at least 2 MPI ranks (rank 0 = server, "
            "ranks >= 1 = clients), got 1; launch with mpiexec -n N, N >= 2"
        )
    if world_size - 1 > cfg.data.num_clients:
        raise ConfigError(
            f"launch error: {world_size - 1} client ranks but 'data.num_clients' is "
            f"{cfg.data.num_clients}; use mpiexec -n <= {cfg.data.num_clients + 1} or raise "
            "data.num_clients"
        )


def checkpoint_files_error(cfg: Config, rank: int, cids: list[int]) -> str:
    """``--resume``, every rank: '' when the checkpoint files this rank will read exist and are
    what was written (the manifest's SHA-256; zip CRCs and client ids for checkpoints from
    before checksums), else a one-line error."""
    from fedkd_mpi.runtime.checkpoint import (
        client_file,
        file_digest,
        read_manifest,
    )

    root = checkpoint_dir(cfg)
    man = read_manifest(root)
    if man is None:
        return f"resume error: no complete checkpoint in {root}"
    d = root / str(man.get("dir", "?"))
    files = [(d / "server.pt", None)] if rank == 0 else [(client_file(d, c), c) for c in cids]
    rank_file = d / f"rank_{rank:04d}.pt"
    if rank_file.exists() or file_digest(man, rank_file.name):
        files.append((rank_file, None))
    for f, cid in files:
        if not f.is_file():
            return (f"resume error: checkpoint file {f} is missing; the checkpoint in {root} is "
                    "incomplete (start a new run, or restore the file)")
        digest = file_digest(man, f.name)
        if digest is not None:
            try:
                ok = hashlib.sha256(f.read_bytes()).hexdigest() == digest
                bad = "" if ok else "its SHA-256 differs from the one in the manifest"
            except OSError as exc:
                bad = exc.strerror or str(exc)
        else:
            bad = _zip_error(f) or (_client_id_error(f, cid) if cid is not None else "")
        if bad:
            return (f"resume error: checkpoint file {f} is corrupt ({bad}); restore it or start "
                    "a new run")
    return ""


def _zip_error(f: Path) -> str:
    try:
        with zipfile.ZipFile(f) as z:
            return z.testzip() or ""
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _client_id_error(f: Path, cid: int) -> str:
    from fedkd_mpi.runtime.residency import load_tree

    try:
        saved = load_tree(f)
        got = int(saved["cid"])
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "" if got == cid else f"it holds client {got}'s state, not client {cid}'s"


def _verdict(comm: MPI.Intracomm, error: str) -> bool:
    """Gather per-rank errors; rank 0 prints the first; True when everyone may go on."""
    errors = gather_text(comm, error)
    first = ""
    if comm.Get_rank() == 0:
        first = next((e for e in errors if e), "")
        if first:
            print(first, file=sys.stderr, flush=True)
    return not bcast_bytes(comm, first.encode() if comm.Get_rank() == 0 else None)


def launch(config_path: str | None, overrides: list[str], overwrite: bool,
           comm: MPI.Intracomm | None = None, resume: bool = False,
           stop: StopFlag | None = None) -> int:
    """Validate, set up and run one job on ``comm`` (default COMM_WORLD); ``resume``
    continues the output file from its last checkpoint. ``stop``: the stop flag, installed
    as early as the caller could (the CLI: before MPI is initialised)."""
    comm = comm or MPI.COMM_WORLD
    stop = stop or StopFlag()
    stop.announce = comm.Get_rank() == 0
    stop.install()
    try:
        return _launch(config_path, overrides, overwrite, comm, resume, stop)
    finally:
        release_current()  # rank 0: the output's lease (a no-op elsewhere)
        hold(None)
        stop.restore()


def _launch(config_path: str | None, overrides: list[str], overwrite: bool,
            comm: MPI.Intracomm, resume: bool, stop: StopFlag) -> int:
    rank = comm.Get_rank()
    cfg: Config | None = None
    lease: Lease | None = None
    error = note = ""
    if rank == 0:
        from fedkd_mpi.runtime.checkpoint import NothingToResume

        try:
            cfg = load_config(config_path, overrides)
            static_checks(cfg, comm.Get_size(), overwrite or resume)
            lease = take_lease(cfg, "resume" if resume else "run")
            check_written_paths(cfg, overwrite or resume)  # under the lease: no job races it
            if resume:  # before the (slower) preflight: a complete run needs nothing else
                from fedkd_mpi.runtime.checkpoint import check_resumable

                check_resumable(cfg, comm.Get_size())
            from fedkd_mpi.runtime.preflight import preflight

            preflight(cfg)
        except NothingToResume as exc:
            note = str(exc)
        except ConfigError as exc:
            error = str(exc)
    else:  # meanwhile the other ranks import what every run needs (torch: seconds)
        import fedkd_mpi.runtime.job  # noqa: F401
    payload = ("E" + error) if error else ("N" + note) if note else \
        ("O" + (cfg.to_yaml() if cfg else ""))
    text = bcast_bytes(comm, payload.encode() if rank == 0 else None).decode()
    if text[0] == "E":
        if rank == 0:
            print(text[1:], file=sys.stderr, flush=True)
        return 2
    if text[0] == "N":
        if rank == 0:
            print(text[1:], flush=True)
        return 0
    cfg = config_from_yaml_text(text[1:])
    import torch

    from fedkd_mpi.comm.placement import Placement
    from fedkd_mpi.data import DataError, load_federated
    from fedkd_mpi.metrics import metric_names
    from fedkd_mpi.runtime.checkpoint import EXIT_INTERRUPTED, agree
    from fedkd_mpi.runtime.context import record_fields
    from fedkd_mpi.runtime.devices import node_info, select_device
    from fedkd_mpi.runtime.job import run, setup
    from fedkd_mpi.runtime.shared_dir import checkpoint_dir_error
    from fedkd_mpi.runtime.summary import run_attrs

    torch.set_num_threads(cfg.runtime.torch_threads)
    device, error = select_device(cfg.runtime, comm)
    node = node_info(comm)
    placement = Placement(cfg.data.num_clients, comm.Get_size())
    cids = placement.clients_of(rank)
    fed = ctx = None
    error = checkpoint_dir_error(cfg, comm) or error  # collective: every rank takes part
    if not error and rank > 0:
        error = spill_dir_error(cfg, len(cids), MPI.Get_processor_name())
    if not error:
        try:
            fed = load_federated(cfg.data, cfg.seed, cids)
        except DataError as exc:
            error = str(exc)
    if not error and resume:
        error = checkpoint_files_error(cfg, rank, cids)
    if not _verdict(comm, error):
        return 2
    try:  # collective: models built, probed and bound; memory budget of client ranks
        ctx, error = setup(cfg, comm, device, fed, placement, node.node_ranks, resume)
    except ConfigError as exc:
        error = str(exc)
    if not error and rank == 0:
        names = metric_names(cfg.data.metric, fed.num_classes)
        error = output_space_error(cfg, comm.Get_size(), len(ctx.alg.specs),
                                   cfg.train.rounds, len(record_fields(cfg, ctx.alg, names)))
    if not _verdict(comm, error):
        return 2
    ctx.stop = stop  # the flag set by any signal since start-up
    if agree(comm, stop.signum != 0, ctx.transport.poll_s):
        if rank == 0:
            print(f"fedkd-mpi: stopped by {stop.name or 'a signal on another rank'} during "
                  "start-up, before the first round; nothing was written", flush=True)
        return EXIT_INTERRUPTED
    devices = gather_text(comm, f"rank {rank} on {MPI.Get_processor_name()}: {device}")
    attrs = run_attrs(cfg, comm, devices or [], fed)
    if lease is not None and lease.takeover:
        attrs["lease_takeovers"] = [lease.takeover]
    if rank == 0:
        print(f"fedkd-mpi: {cfg.algorithm}, {cfg.data.num_clients} clients on "
              f"{comm.Get_size() - 1} client ranks, {cfg.train.rounds} rounds -> {cfg.output}",
              flush=True)
    return run(ctx, fed, attrs)
