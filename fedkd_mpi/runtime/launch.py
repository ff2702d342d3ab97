"""Job start-up: validate once on rank 0, check every rank, then run or exit cleanly.

Exit codes: 0 success, 2 bad input (one line, printed once by rank 0, before any work and
before anything is written). Any other failure raises; the CLI turns it into ``MPI_Abort``.
torch and the rest of the runtime are imported only once rank 0's checks passed, so a bad
config or output path costs well under a second per rank.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

from mpi4py import MPI

from fedkd_mpi.comm.mpi import bcast_bytes, gather_text
from fedkd_mpi.config import Config, ConfigError, config_from_yaml_text, load_config


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
    check_output(cfg.output, overwrite)


def check_output(output: str, overwrite: bool) -> None:
    out = Path(output)
    if out.is_dir():
        raise ConfigError(f"config error: 'output' ({output}) is a directory; give a file path")
    if out.exists() and not overwrite:
        raise ConfigError(
            f"config error: 'output' file {output} already exists; pass --overwrite to "
            "replace it or set output=<new path>"
        )
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"config error: 'output' ({output}): {probe} is not a directory")
    try:  # a real probe: permissions, read-only mounts, root squash, quota
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".fedkd_mpi-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"config error: 'output' directory {probe} is not writable "
                          f"({exc.strerror or exc})") from None


def checkpoint_files_error(cfg: Config, rank: int, cids: list[int]) -> str:
    """``--resume``, every rank: '' when the checkpoint files this rank will read exist and are
    intact (zip CRCs of the torch.save archives), else a one-line error."""
    from fedkd_mpi.runtime.checkpoint import checkpoint_dir, client_file, read_manifest

    root = checkpoint_dir(cfg)
    man = read_manifest(root)
    if man is None:
        return f"resume error: no complete checkpoint in {root}"
    d = root / str(man.get("dir", "?"))
    files = [d / "server.pt"] if rank == 0 else [client_file(d, c) for c in cids]
    rank_file = d / f"rank_{rank:04d}.pt"
    if rank_file.exists():
        files.append(rank_file)
    for f in files:
        if not f.is_file():
            return (f"resume error: checkpoint file {f} is missing; the checkpoint in {root} is "
                    "incomplete (start a new run, or restore the file)")
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
            bad = str(exc) or type(exc).__name__
        if bad:
            return (f"resume error: checkpoint file {f} is corrupt ({bad}); restore it or start "
                    "a new run")
    return ""


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
           comm: MPI.Intracomm | None = None, resume: bool = False) -> int:
    """Validate, set up and run one job on ``comm`` (default COMM_WORLD); ``resume``
    continues the output file from its last checkpoint."""
    comm = comm or MPI.COMM_WORLD
    rank = comm.Get_rank()
    cfg: Config | None = None
    error = ""
    if rank == 0:
        try:
            cfg = load_config(config_path, overrides)
            static_checks(cfg, comm.Get_size(), overwrite or resume)
            from fedkd_mpi.runtime.preflight import preflight

            preflight(cfg)
            if resume:
                from fedkd_mpi.runtime.checkpoint import check_resumable

                check_resumable(cfg, comm.Get_size())
        except ConfigError as exc:
            error = str(exc)
    payload = ("E" + error) if error else ("O" + (cfg.to_yaml() if cfg else ""))
    text = bcast_bytes(comm, payload.encode() if rank == 0 else None).decode()
    if text[0] == "E":
        if rank == 0:
            print(text[1:], file=sys.stderr, flush=True)
        return 2
    cfg = config_from_yaml_text(text[1:])
    import torch

    from fedkd_mpi.comm.placement import Placement
    from fedkd_mpi.data import DataError, load_federated
    from fedkd_mpi.runtime.devices import node_info, select_device
    from fedkd_mpi.runtime.job import run, setup
    from fedkd_mpi.runtime.summary import run_attrs

    torch.set_num_threads(cfg.runtime.torch_threads)
    device, error = select_device(cfg.runtime, comm)
    node = node_info(comm)
    placement = Placement(cfg.data.num_clients, comm.Get_size())
    cids = placement.clients_of(rank)
    fed = ctx = None
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
    if not _verdict(comm, error):
        return 2
    devices = gather_text(comm, f"rank {rank} on {MPI.Get_processor_name()}: {device}")
    attrs = run_attrs(cfg, comm, devices or [], fed)
    if rank == 0:
        print(f"fedkd-mpi: {cfg.algorithm}, {cfg.data.num_clients} clients on "
              f"{comm.Get_size() - 1} client ranks, {cfg.train.rounds} rounds -> {cfg.output}",
              flush=True)
    return run(ctx, fed, attrs)
