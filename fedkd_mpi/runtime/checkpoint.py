"""Checkpoint at round boundaries, on a schedule or on SIGTERM/SIGUSR1, and resume from one.

Layout (``runtime.checkpoint_dir``, default ``<output>.ckpt``; every rank must see it)::

    manifest.json              written last, by rank 0, atomically: the only entry point
    round_000006/server.pt     rank 0: shared model (all tensors), alg.server_state, RNG states
    round_000006/rank_0001.pt  each rank: its RNG states
    round_000006/client_0000012.pt  one per client (written by the rank hosting it): mentor,
                               W^h, both optimizers' state, Client.state

Every file is written to a temporary name and renamed (``os.replace``), and the manifest
names a complete round directory only after a barrier, so a kill at any moment leaves the
previous checkpoint usable; a directory without a manifest pointing at it is ignored (and
removed by the next checkpoint). Files hold tensors, numbers and containers only
(``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from mpi4py import MPI

from fedkd_mpi.comm.mpi import wait
from fedkd_mpi.config import CHECKPOINT_MANIFEST as MANIFEST
from fedkd_mpi.config import Config, ConfigError, checkpoint_dir
from fedkd_mpi.runtime.residency import atomic_save, load_tree

FORMAT = 2  # 2: typed client state (ClientState: codec + algorithm state)
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
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check_resumable(cfg: Config, world_size: int) -> dict[str, Any]:
    """Rank 0, before any work: the manifest to resume from, or ConfigError (one line)."""
    root = checkpoint_dir(cfg)
    if not Path(cfg.output).is_file():
        raise ConfigError(f"resume error: 'output' file {cfg.output} does not exist; run "
                          "without --resume to start a new run")
    man = read_manifest(root)
    if man is None or not (root / man.get("dir", "?")).is_dir():
        raise ConfigError(f"resume error: no complete checkpoint in {root} (no {MANIFEST}); "
                          "set runtime.checkpoint_every or signal the run to write one")
    if man.get("format") != FORMAT:
        raise ConfigError(f"resume error: checkpoint format {man.get('format')} in {root}, "
                          f"expected {FORMAT}")
    diff = _first_difference(science(cfg), man.get("config", {}))
    if diff:
        raise ConfigError(f"resume error: the checkpoint in {root} is from a different "
                          f"config ({diff}); resume with the original config")
    if man.get("world_size") != world_size:
        raise ConfigError(f"resume error: the checkpoint in {root} was written by "
                          f"{man.get('world_size')} ranks; resume with mpiexec -n "
                          f"{man.get('world_size')} (got {world_size})")
    if int(man["round"]) >= cfg.train.rounds:
        raise ConfigError(f"resume error: the checkpoint in {root} is at round "
                          f"{man['round']}, the run has only {cfg.train.rounds} rounds")
    return man


# ---------------------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------------------
class StopFlag:
    """SIGTERM / SIGUSR1 set a flag; the run checkpoints at the next round boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def install(self) -> StopFlag:
        for s in self.SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


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
class Checkpointer:
    """Collective checkpoint writer/reader of one run (every rank constructs one)."""

    def __init__(self, cfg: Config, comm: MPI.Intracomm, poll_s: float) -> None:
        self.cfg, self.comm, self.poll_s = cfg, comm, poll_s
        self.root = checkpoint_dir(cfg)
        self.rank = comm.Get_rank()
        self.last_round = -1

    def save(self, rounds_done: int, store: Any, server: dict[str, Any] | None) -> None:
        """Collective: every rank writes its shard, then rank 0 writes the manifest."""
        name = f"round_{rounds_done:06d}"
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        if server is not None:
            atomic_save({**server, "rng": rng_states(), "round": rounds_done}, d / "server.pt")
        if store is not None:
            for cid in store.cids:
                store.save_to(cid, client_file(d, cid))
        atomic_save({"rng": rng_states(), "round": rounds_done}, d / f"rank_{self.rank:04d}.pt")
        barrier(self.comm, self.poll_s)
        if self.rank == 0:
            man = {"format": FORMAT, "round": rounds_done, "dir": name,
                   "world_size": self.comm.Get_size(), "num_clients": self.cfg.data.num_clients,
                   "config": science(self.cfg),
                   "config_yaml": yaml.safe_dump(science(self.cfg), sort_keys=False)}
            tmp = self.root / f"{MANIFEST}.tmp"
            tmp.write_text(json.dumps(man, indent=1))
            os.replace(tmp, self.root / MANIFEST)
            for old in self.root.glob("round_*"):  # earlier (or orphaned) checkpoints
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        self.last_round = rounds_done
        barrier(self.comm, self.poll_s)

    def load(self) -> tuple[int, Path, dict[str, Any] | None]:
        """(rounds done, round directory, server payload on rank 0) of the manifest's
        checkpoint; restores this rank's RNG states when the world size is unchanged."""
        man = read_manifest(self.root)
        if man is None:
            raise RuntimeError(f"no checkpoint manifest in {self.root}")
        d = self.root / man["dir"]
        if man.get("world_size") == self.comm.Get_size():
            rank_file = d / f"rank_{self.rank:04d}.pt"
            if rank_file.is_file():
                set_rng_states(load_tree(rank_file)["rng"])
        server = load_tree(d / "server.pt") if self.rank == 0 else None
        self.last_round = int(man["round"])
        return int(man["round"]), d, server
