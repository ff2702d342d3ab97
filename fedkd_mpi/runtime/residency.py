"""Clients of one rank with a bounded number in memory; the rest spilled to node-local disk.

A client's *private state* is everything that must survive from one round to the next and
never leaves its rank: the private model (mentor), W^h, both optimizers' state and
``Client.state``. :class:`ClientStore` keeps at most ``runtime.resident_clients`` of them
materialised (least recently used first out) and writes the others to one file per client
under a per-job, per-rank directory (``torch.save``; read back with
``torch.load(weights_only=True)``: tensors, numbers and containers only, never pickled
objects). ``None`` keeps every client in memory and touches no disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fedkd_mpi.config import CHECKPOINT_MANIFEST
from fedkd_mpi.runtime.client import Client
from fedkd_mpi.storage.disk import storage_error
from fedkd_mpi.storage.janitor import remove_when_gone


def client_state(cl: Client) -> dict[str, Any]:
    """The private state of one client as a tree of tensors (for torch.save)."""
    out: dict[str, Any] = {"cid": cl.cid, "state": cl.state.state_dict()}
    for key in ("private", "proj", "opt_private", "opt_shared"):
        obj = getattr(cl, key)
        if obj is not None:
            out[key] = obj.state_dict()
    return out


def load_client_state(cl: Client, saved: dict[str, Any]) -> None:
    """Restore :func:`client_state` output into a freshly built client of the same id."""
    if int(saved["cid"]) != cl.cid:
        raise ValueError(f"state of client {saved['cid']} loaded into client {cl.cid}")
    for key in ("private", "proj", "opt_private", "opt_shared"):
        obj = getattr(cl, key)
        if (obj is None) != (key not in saved):
            raise ValueError(f"client {cl.cid}: saved state and model disagree on '{key}'")
        if obj is not None:
            obj.load_state_dict(saved[key])
    cl.state.load_state_dict(saved["state"])


class CheckpointError(RuntimeError):
    """A checkpoint file that is not what was written (checksum, client id): one line."""


def write_atomic(data: bytes | memoryview, path: Path, what: str, durable: bool = False) -> None:
    """Write ``data`` to a temporary file in the same directory, then ``os.replace``; with
    ``durable`` also fsync the file and the directory (checkpoints). On any failure the
    temporary file is removed and a file-system problem becomes a one-line StorageError
    naming ``path`` (``no space left on device for <what> <path> (...)``)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException as exc:
        err = storage_error(exc, what, path, len(data))  # free space before the cleanup
        try:
            tmp.unlink()
        except OSError:
            pass
        if err is exc:
            raise
        raise err from exc


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: object, path: Path, what: str = "a state file",
                durable: bool = False) -> tuple[str, int]:
    """torch.save into memory, then :func:`write_atomic`; returns (SHA-256 hex, bytes) of
    exactly what was written (checkpoint manifests record it)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    write_atomic(data, path, what, durable)
    return hashlib.sha256(data).hexdigest(), data.nbytes


def copy_atomic(src: Path, dst: Path, what: str, durable: bool = False) -> tuple[str, int]:
    """Copy a file through memory with :func:`write_atomic`; (SHA-256 hex, bytes) of it."""
    data = src.read_bytes()
    write_atomic(data, dst, what, durable)
    return hashlib.sha256(data).hexdigest(), len(data)


def read_verified(path: Path, sha256: str | None) -> bytes:
    """The bytes of ``path``; CheckpointError unless they hash to ``sha256`` (when given)."""
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"checkpoint file {path} does not match the checksum its "
                              "checkpoint's manifest recorded (changed or damaged after it "
                              "was written); restore it or start a new run")
    return data


def manifest_digest(path: Path) -> str | None:
    """The SHA-256 that the manifest of the checkpoint holding ``path`` records for it (None
    for checkpoints written before checksums, or a file the manifest does not name)."""
    try:
        man = json.loads((path.parent.parent / CHECKPOINT_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(man, dict) or man.get("dir") != path.parent.name:
        return None
    entry = (man.get("files") or {}).get(path.name)
    return entry[0] if isinstance(entry, list) and entry else None


def load_tree(path: Path, device: torch.device | str = "cpu",
              sha256: str | None = None) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a file (verified against ``sha256`` when given:
    the bytes checked are the bytes loaded)."""
    if sha256 is None:
        return torch.load(path, map_location=device, weights_only=True)
    data = read_verified(path, sha256)
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


class ClientStore:
    """The clients ``cids`` of this rank; at most ``capacity`` materialised at a time.

    ``factory(cid)`` builds a client with its seeded initial state (deterministic, so a client
    never touched so far needs no file).
    """

    def __init__(self, cids: Sequence[int], factory: Callable[[int], Client],
                 capacity: int | None, spill_root: str | None, rank: int,
                 device: torch.device | str = "cpu") -> None:
        self.cids = list(cids)
        self.factory = factory
        self.capacity = capacity if capacity is not None and capacity < len(self.cids) else None
        self.device = device
        self.resident: OrderedDict[int, Client] = OrderedDict()
        self.spilled: set[int] = set()
        self.loads = self.spills = 0
        self.digests: dict[int, str] = {}  # SHA-256 of each spilled file, as written
        self.dir: Path | None = None
        if self.capacity is not None:
            base = Path(spill_root or tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f"fedkd_mpi-spill-r{rank}-", dir=base))
            remove_when_gone(self.dir)

    def _path(self, cid: int) -> Path:
        assert self.dir is not None
        return self.dir / f"client_{cid:07d}.pt"

    def get(self, cid: int) -> Client:
        """The client, materialised (loading it, and spilling the least recently used)."""
        cl = self.resident.get(cid)
        if cl is not None:
            self.resident.move_to_end(cid)
            return cl
        if self.capacity is not None:  # make room first: never capacity + 1 in memory
            while len(self.resident) >= self.capacity:
                old, ocl = self.resident.popitem(last=False)
                self.digests[old], _ = atomic_save(client_state(ocl), self._path(old),
                                                   "a spilled client state")
                self.spilled.add(old)
                self.spills += 1
                del ocl
        cl = self.factory(cid)
        if cid in self.spilled:
            load_client_state(cl, self._read_spilled(cid))
            self.loads += 1
        self.resident[cid] = cl
        return cl

    def save_to(self, cid: int, path: Path) -> tuple[str, int]:
        """Write client ``cid``'s state to ``path`` (checkpoint, fsynced), wherever it lives
        now; (SHA-256 hex, bytes) of the file."""
        what = "a checkpoint file"
        if cid in self.resident:
            return atomic_save(client_state(self.resident[cid]), path, what, durable=True)
        if cid in self.spilled:
            digest = copy_atomic(self._path(cid), path, what, durable=True)
            if digest[0] != self.digests[cid]:
                path.unlink(missing_ok=True)
                raise self._changed(cid)
            return digest
        # never touched: its initial state
        return atomic_save(client_state(self.factory(cid)), path, what, durable=True)

    def adopt(self, cid: int, path: Path) -> None:
        """Take client ``cid``'s state from a checkpoint file (resume): the bytes are checked
        against the checkpoint manifest's checksum and the state must be client ``cid``'s."""
        self.resident.pop(cid, None)
        data = read_verified(path, manifest_digest(path))  # every file is named (format 3)
        cl = self.factory(cid)
        try:
            saved = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
            load_client_state(cl, saved)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint file {path}: {exc}; restore it or start a new "
                                  "run") from None
        if self.dir is not None:
            write_atomic(data, self._path(cid), "a spilled client state")
            self.digests[cid] = hashlib.sha256(data).hexdigest()
            self.spilled.add(cid)
        else:
            self.resident[cid] = cl

    def _changed(self, cid: int) -> CheckpointError:
        return CheckpointError(f"the spilled state of client {cid} ({self._path(cid)}) is not "
                               "what this rank wrote (its SHA-256 differs): the node-local "
                               "spill directory was changed or damaged during the run")

    def _read_spilled(self, cid: int) -> dict[str, Any]:
        try:
            return load_tree(self._path(cid), self.device, sha256=self.digests[cid])
        except CheckpointError:
            raise self._changed(cid) from None

    def states(self) -> LazyStates:
        return LazyStates(self)

    def close(self) -> None:
        """Drop everything and delete the spill directory."""
        self.resident.clear()
        self.spilled.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class LazyStates(Sequence):
    """``Client.state`` of every client of a store, materialised only when accessed."""

    def __init__(self, store: ClientStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store.cids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.store.get(self.store.cids[i]).state

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(self)):
            yield self[i]


# ---------------------------------------------------------------------------------------
# start-up budget
# ---------------------------------------------------------------------------------------
def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def budget_error(per_client_bytes: int, hosted: int, capacity: int | None, node_ranks: int,
                 avail_bytes: int | None, spill_free_bytes: int | None, rank: int) -> str:
    """'' when ``capacity`` resident clients fit this rank's share of the node's memory."""
    if hosted == 0:
        return ""
    resident = hosted if capacity is None else min(capacity, hosted)
    need = resident * per_client_bytes
    mb = 1024 * 1024
    if avail_bytes is not None:
        share = avail_bytes // max(1, node_ranks)
        if need > share:
            fit = max(1, share // max(1, per_client_bytes))
            key = "runtime.resident_clients"
            now = f"{key} is {capacity}" if capacity is not None else f"{key} is unset (all)"
            return (f"config error: rank {rank} would keep {resident} clients' private state "
                    f"in memory (~{need // mb} MiB at ~{per_client_bytes // mb + 1} MiB each) "
                    f"but its share of the node's available memory is {share // mb} MiB; "
                    f"{now}, use at most {fit}")
    spilled = hosted - resident
    if spilled > 0 and spill_free_bytes is not None and spilled * per_client_bytes > \
            spill_free_bytes:
        return (f"config error: rank {rank} would spill {spilled} clients (~"
                f"{spilled * per_client_bytes // mb} MiB) but 'runtime.spill_dir' has only "
                f"{spill_free_bytes // mb} MiB free")
    return ""


def per_client_bytes(private: torch.nn.Module | None, proj: torch.nn.Module | None,
                     shared_trainable: int, optimizer: str) -> int:
    """Estimated bytes of one client's private state (models + optimizer moments)."""
    moments = 2 if optimizer == "adam" else 0
    n = 0
    for m in (private, proj):
        if m is not None:
            n += sum(t.numel() * t.element_size() for t in m.state_dict().values())
            n += moments * sum(p.numel() * p.element_size() for p in m.parameters()
                               if p.requires_grad)
    n += moments * 4 * shared_trainable  # this client's moments of the shared model
    return int(n * 1.25) + 64 * 1024  # allocator and bookkeeping slack
