"""Checkpoint at round boundaries, on a schedule or on SIGTERM/SIGUSR1, and resume from one.

Layout (``runtime.checkpoint_dir``, default ``<output>.ckpt``; every rank must see it)::

    manifest.json              written last, by rank 0, atomically: the only entry point
    round_000006/server.pt     rank 0: shared model (all tensors), alg.server_state, RNG states
    round_000006/rank_0001.pt  each rank: its RNG states
    round_000006/client_0000012.pt  one per client (written by the rank hosting it): mentor,
                               W^h, both optimizers' state, Client.state

Every file is written to a temporary name, fsynced and renamed (``os.replace``), and the
manifest names a complete round directory only after every rank has written its files, so a
kill at any moment leaves the previous checkpoint usable; a directory without a manifest
pointing at it is ignored (and removed by the next checkpoint, or when a checkpoint fails).
The manifest records the SHA-256 and size of every file, and a resume loads exactly the bytes
it verified. Files hold tensors, numbers and containers only
(``torch.load(weights_only=True)``).

A new run removes a checkpoint left in its directory (it belongs to the file the new run
replaces); a completed run removes its own (it cannot be resumed any more).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from mpi4py import MPI

from fedkd_mpi.comm.mpi import wait
from fedkd_mpi.config import CHECKPOINT_MANIFEST as MANIFEST
from fedkd_mpi.config import Config, ConfigError, checkpoint_dir
from fedkd_mpi.runtime import manifest
from fedkd_mpi.runtime.manifest import FORMAT
from fedkd_mpi.runtime.residency import atomic_save, load_tree, write_atomic
from fedkd_mpi.runtime.stop import StopFlag  # noqa: F401 (the run's stop flag)

#: exit status of a run that checkpointed on a signal and stopped (resume with --resume)
EXIT_INTERRUPTED = 3
#: config sections that may differ on resume (they do not change the results)
FREE_KEYS = ("output", "runtime")


def client_file(round_dir: Path, cid: int) -> Path:
    return round_dir / f"client_{cid:07d}.pt"


def science(cfg: Config) -> dict[str, Any]:
    """The configuration that determines the results (everything but output and runtime)."""
    tree = cfg.model_dump(mode="json")
    for k in FREE_KEYS:
        tree.pop(k, None)
    return tree


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    return None if a == b else f"{path}={b!r} in the checkpoint, {a!r} now"


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The verified manifest in ``root`` (checksum, format, schema), None when there is none
    or it does not verify (rank 0's :func:`check_resumable` says why)."""
    try:
        return manifest.load(root / MANIFEST)
    except ConfigError:
        return None


def file_digest(man: dict[str, Any] | None, name: str) -> str | None:
    """The SHA-256 the manifest records for file ``name`` of its round (None: not recorded,
    a checkpoint from before checksums)."""
    entry = ((man or {}).get("files") or {}).get(name)
    return entry[0] if isinstance(entry, list) and entry else None


class NothingToResume(ConfigError):
    """``--resume`` of a run that is already complete: one line, exit status 0."""


def _run_file_facts(path: Path) -> tuple[str, int, dict[str, Any], str | None]:
    """(status, rounds held, stored config, writer) of a run file; ConfigError when it is
    not a readable fedkd_mpi run file."""
    from fedkd_mpi.storage.h5 import open_live, run_state
    from fedkd_mpi.storage.liveness import complete_rounds
    from fedkd_mpi.storage.reading import UnreadableRunFile, read_error, walk

    try:  # in bounded time, damaged or not (storage/reading.py)
        with open_live(path) as f:
            walk(f, data=True)  # every byte resume will copy: damage shows before training
            state = run_state(f)
            rows = complete_rounds(f)
            text = f.attrs.get("config", "")
            text = text.decode() if isinstance(text, bytes) else str(text)
    except UnreadableRunFile as exc:  # damaged, empty, not HDF5: the file is left as it is
        raise ConfigError(f"resume error: {exc}") from None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"resume error: {read_error(path, exc)}") from None
    try:
        stored = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        stored = {}
    return str(state["status"]), rows, stored if isinstance(stored, dict) else {}, \
        state["writer"]  # type: ignore[return-value]


def check_resumable(cfg: Config, world_size: int) -> dict[str, Any]:
    """Rank 0, before any work: the manifest to resume from, or ConfigError (one line);
    :class:`NothingToResume` when the run file is complete. Reads, never writes."""
    from fedkd_mpi.storage.liveness import writer_alive

    root = checkpoint_dir(cfg)
    out = Path(cfg.output)
    if not out.is_file():
        raise ConfigError(f"resume error: 'output' file {cfg.output} does not exist; run "
                          "without --resume to start a new run")
    no_checkpoint = ConfigError(f"resume error: no complete checkpoint in {root} (no "
                                f"{MANIFEST}); set runtime.checkpoint_every or signal the run "
                                "to write one")
    try:
        status, rows, stored, writer = _run_file_facts(out)
    except ConfigError:
        if not (root / MANIFEST).exists():
            raise no_checkpoint from None
        raise
    if status == "completed":
        if rows == cfg.train.rounds:
            raise NothingToResume(f"fedkd-mpi: nothing to resume: {cfg.output} is complete "
                                  f"({rows} of {rows} rounds)")
        raise ConfigError(f"resume error: {cfg.output} is complete with {rows} rounds and "
                          f"train.rounds is {cfg.train.rounds}; a finished run is not "
                          "extended (start a new run: another output, or --overwrite)")
    if status == "running" and writer_alive(writer):
        host, pid, _ = str(writer).rsplit(":", 2)
        raise ConfigError(f"resume error: {cfg.output} is still being written by a live run "
                          f"(pid {pid} on {host}); stop it first (SIGTERM checkpoints it)")
    man = manifest.load(root / MANIFEST)  # a damaged or edited one: one line, here
    if man is None or not (root / man["dir"]).is_dir():
        raise no_checkpoint
    diff = _first_difference(science(cfg), man.get("config", {}))
    if diff:
        raise ConfigError(f"resume error: the checkpoint in {root} is from a different "
                          f"config ({diff}); resume with the original config")
    if man.get("world_size") != world_size:
        raise ConfigError(f"resume error: the checkpoint in {root} was written by "
                          f"{man.get('world_size')} ranks; resume with mpiexec -n "
                          f"{man.get('world_size')} (got {world_size})")
    done = int(man.get("round", -1))
    if done >= cfg.train.rounds:
        raise ConfigError(f"resume error: the checkpoint in {root} is at round "
                          f"{done}, the run has only {cfg.train.rounds} rounds")
    stored = {k: v for k, v in stored.items() if k not in FREE_KEYS}
    file_diff = _first_difference(stored, man.get("config", {})) if stored else None
    if file_diff or rows < done:
        why = (file_diff.replace(" now", " in the run file") if file_diff else
               f"the file holds {rows} rounds, the checkpoint is at round {done}")
        raise ConfigError(f"resume error: the checkpoint in {root} is not from the run in "
                          f"{cfg.output} ({why}); start a new run or restore the matching "
                          "file")
    manifest.cross_check(man, root / MANIFEST, _checkpoint_record(out), cfg.output, world_size,
                         cfg.data.num_clients)
    return man


def _checkpoint_record(path: Path) -> dict[str, Any]:
    """The run file's id and record of checkpoint manifests (already found readable)."""
    from fedkd_mpi.storage.h5 import checkpoint_record, open_live

    with open_live(path) as f:
        return checkpoint_record(f)


def drop_checkpoint(cfg: Config) -> None:
    """Remove the checkpoint in ``runtime.checkpoint_dir`` (manifest first, so that it is
    never half-valid), and the directory when that leaves it empty. Rank 0."""
    root = checkpoint_dir(cfg)
    try:
        (root / MANIFEST).unlink()
    except FileNotFoundError:
        pass
    for old in root.glob("round_*"):
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(f"{MANIFEST}.tmp*"):
        tmp.unlink(missing_ok=True)
    try:
        root.rmdir()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------------------
def agree(comm: MPI.Intracomm, flag: bool, poll_s: float) -> bool:
    """True on every rank when ``flag`` is true on any rank (one int64 allreduce)."""
    out = np.zeros(1, np.int64)
    wait(comm.Iallreduce(np.array([int(flag)], np.int64), out, op=MPI.MAX), poll_s)
    return bool(out[0])


def barrier(comm: MPI.Intracomm, poll_s: float) -> None:
    wait(comm.Ibarrier(), poll_s)


# ---------------------------------------------------------------------------------------
# RNG states (tensors only)
# ---------------------------------------------------------------------------------------
def rng_states() -> dict[str, Any]:
    _kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out: dict[str, Any] = {"torch": torch.get_rng_state(),
                           "numpy_keys": torch.from_numpy(np.asarray(keys, np.int64)),
                           "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss),
                           "numpy_gauss": float(gauss)}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"],
                         s["numpy_has_gauss"], s["numpy_gauss"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---------------------------------------------------------------------------------------
# writing and reading
# ---------------------------------------------------------------------------------------
def _gather_json(comm: MPI.Intracomm, obj: Any, poll_s: float) -> list[Any] | None:
    """Gather one JSON value per rank to rank 0, through polled non-blocking collectives
    (rank 0 keeps watching for fault notes while it waits)."""
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    size = np.array([data.size], np.int64)
    root = comm.Get_rank() == 0
    sizes = np.zeros(comm.Get_size(), np.int64) if root else None
    wait(comm.Igather(size, sizes, root=0), poll_s)
    if not root:
        wait(comm.Igatherv(data, None, root=0), poll_s)
        return None
    recv = np.empty(int(sizes.sum()), np.uint8)
    displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    wait(comm.Igatherv(data, [recv, (sizes, displs), MPI.BYTE], root=0), poll_s)
    return [json.loads(b.tobytes()) for b in np.split(recv, np.cumsum(sizes)[:-1])]


class Checkpointer:
    """Collective checkpoint writer/reader of one run (every rank constructs one)."""

    def __init__(self, cfg: Config, comm: MPI.Intracomm, poll_s: float) -> None:
        self.cfg, self.comm, self.poll_s = cfg, comm, poll_s
        self.root = checkpoint_dir(cfg)
        self.rank = comm.Get_rank()
        self.last_round = -1
        self.run_id = ""  # rank 0: the run file's id, which every manifest carries
        #: rank 0: records a manifest in the run file: (slot, round, sha256), see RunWriter
        self.recorder: Callable[[int, int, str], None] | None = None

    def save(self, rounds_done: int, store: Any, server: dict[str, Any] | None) -> None:
        """Collective: rank 0 creates the round directory, every rank writes its files
        (fsynced), their checksums go to rank 0, which writes the manifest last."""
        name = f"round_{rounds_done:06d}"
        d = self.root / name
        what = "a checkpoint file"
        if self.rank == 0:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                from fedkd_mpi.storage.disk import storage_error

                raise storage_error(exc, "the checkpoint directory", d) from exc
        barrier(self.comm, self.poll_s)  # the directory exists before anyone writes into it
        files: dict[str, list] = {}
        rank_file = d / f"rank_{self.rank:04d}.pt"
        if self.rank > 0:
            try:  # a no-op, unless a shared file system's cache hides the new directory
                d.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # the first write names the problem
            if store is not None:
                for cid in store.cids:
                    path = client_file(d, cid)
                    files[path.name] = list(store.save_to(cid, path))
            files[rank_file.name] = list(atomic_save(
                {"rng": rng_states(), "round": rounds_done}, rank_file, what, True))
        every = _gather_json(self.comm, files, self.poll_s)  # also: every client rank is done
        if self.rank == 0:  # last, so that its failure never races a client still writing
            assert every is not None
            if server is not None:
                payload = {**server, "rng": rng_states(), "round": rounds_done}
                files["server.pt"] = list(atomic_save(payload, d / "server.pt", what, True))
            files[rank_file.name] = list(atomic_save(
                {"rng": rng_states(), "round": rounds_done}, rank_file, what, True))
            merged = {k: v for part in [files, *every[1:]] for k, v in part.items()}
            man = {"format": FORMAT, "round": rounds_done, "dir": name,
                   "world_size": self.comm.Get_size(), "num_clients": self.cfg.data.num_clients,
                   "run_id": self.run_id, "config": science(self.cfg),
                   "config_yaml": yaml.safe_dump(science(self.cfg), sort_keys=False),
                   "files": merged}
            digest = manifest.manifest_digest(man)
            if self.recorder is not None:  # recorded before it exists, then as committed
                self.recorder(1, rounds_done, digest)
            write_atomic(manifest.seal(man), self.root / MANIFEST, "the checkpoint manifest",
                         durable=True)
            if self.recorder is not None:
                self.recorder(0, rounds_done, digest)
            for old in self.root.glob("round_*"):  # earlier (or orphaned) checkpoints
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        self.last_round = rounds_done
        barrier(self.comm, self.poll_s)

    def discard_incomplete(self) -> None:
        """Remove round directories the manifest does not name (a checkpoint that failed
        half-way) and temporary files. Rank 0, after a failure."""
        man = read_manifest(self.root)
        keep = man["dir"] if man else None
        for old in self.root.glob("round_*"):
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
        for tmp in self.root.glob(f"{MANIFEST}.tmp*"):
            tmp.unlink(missing_ok=True)
        if man is None:
            try:  # created by this failed checkpoint: leave what was there before
                self.root.rmdir()
            except OSError:
                pass

    def load(self) -> tuple[int, Path, dict[str, Any] | None]:
        """(rounds done, round directory, server payload on rank 0) of the manifest's
        checkpoint; restores this rank's RNG states when the world size is unchanged. Every
        file is checked against the manifest's checksum (the bytes checked are the bytes
        loaded)."""
        man = read_manifest(self.root)
        if man is None:
            raise RuntimeError(f"no checkpoint manifest in {self.root}")
        d = self.root / man["dir"]
        if man.get("world_size") == self.comm.Get_size():
            rank_file = d / f"rank_{self.rank:04d}.pt"
            if rank_file.is_file():
                set_rng_states(load_tree(rank_file, sha256=file_digest(man,
                                                                       rank_file.name))["rng"])
        server = (load_tree(d / "server.pt", sha256=file_digest(man, "server.pt"))
                  if self.rank == 0 else None)
        self.last_round = int(man["round"])
        return int(man["round"]), d, server
