"""Is the checkpoint directory one directory that every rank sees? Checked at start-up,
before any rank trains: rank 0 writes a token with a fresh nonce into it, every rank reads it
back. A node-local path (``/tmp/...`` on each node, a scratch disk) fails here, in one line,
instead of at ``--resume`` after the allocation is gone. Whatever the check creates (the
token, directories that did not exist) is removed again."""

from __future__ import annotations

import uuid
from pathlib import Path

from mpi4py import MPI

from fedkd_mpi.comm.mpi import bcast_bytes, gather_text
from fedkd_mpi.config import Config, checkpoint_dir

TOKEN_PREFIX = ".fedkd_mpi-visible-"


def _make_dirs(root: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (outermost first)."""
    missing = []
    p = root
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    missing.reverse()
    for d in missing:
        d.mkdir()
    return missing


def checkpoint_dir_error(cfg: Config, comm: MPI.Intracomm) -> str:
    """Collective: on rank 0 '' when every rank sees the token rank 0 wrote into the
    checkpoint directory, else one line naming the ranks and hosts that do not; '' on the
    other ranks."""
    root = checkpoint_dir(cfg)
    rank = comm.Get_rank()
    nonce, created, token, fail = "", [], None, ""
    if rank == 0:
        nonce = uuid.uuid4().hex
        try:
            created = _make_dirs(root)
            token = root / f"{TOKEN_PREFIX}{nonce}"
            token.write_text(nonce)
        except OSError as exc:
            fail = (f"config error: 'runtime.checkpoint_dir' ({root}) cannot be written "
                    f"({exc.strerror or exc}); give a writable directory that every node "
                    "mounts")
            nonce = ""
    nonce = bcast_bytes(comm, nonce.encode() if rank == 0 else None).decode()
    seen = "ok"
    if rank > 0 and nonce:
        try:
            seen = "ok" if (root / f"{TOKEN_PREFIX}{nonce}").read_text() == nonce else "other"
        except OSError:
            seen = "missing"
    answers = gather_text(comm, f"{seen} {MPI.Get_processor_name()}")
    if rank != 0:
        return ""
    if token is not None:
        token.unlink(missing_ok=True)
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break
    if fail or not nonce:
        return fail
    assert answers is not None
    blind = [(r, a.split(" ", 1)[1]) for r, a in enumerate(answers) if not a.startswith("ok")]
    if not blind:
        return ""
    hosts = sorted({h for _, h in blind})
    ranks = ", ".join(str(r) for r, _ in blind[:8]) + (" …" if len(blind) > 8 else "")
    return (f"config error: 'runtime.checkpoint_dir' ({root}) is not one directory shared by "
            f"every rank: rank{'s' if len(blind) > 1 else ''} {ranks} on "
            f"{', '.join(hosts[:4])} do not see what rank 0 on {MPI.Get_processor_name()} "
            "wrote there (a node-local path?); give a directory on a file system that every "
            "node mounts, e.g. the default <output>.ckpt beside a shared output")
