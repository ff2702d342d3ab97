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

import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fedkd_mpi.runtime.client import Client


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


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then os.replace."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_tree(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


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
        self.dir: Path | None = None
        if self.capacity is not None:
            base = Path(spill_root or tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f"fedkd_mpi-spill-r{rank}-", dir=base))

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
                atomic_save(client_state(ocl), self._path(old))
                self.spilled.add(old)
                self.spills += 1
                del ocl
        cl = self.factory(cid)
        if cid in self.spilled:
            load_client_state(cl, load_tree(self._path(cid), self.device))
            self.loads += 1
        self.resident[cid] = cl
        return cl

    def save_to(self, cid: int, path: Path) -> None:
        """Write client ``cid``'s state to ``path`` (checkpoint), wherever it lives now."""
        if cid in self.resident:
            atomic_save(client_state(self.resident[cid]), path)
        elif cid in self.spilled:
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            shutil.copyfile(self._path(cid), tmp)
            os.replace(tmp, path)
        else:  # never touched: its initial state
            atomic_save(client_state(self.factory(cid)), path)

    def adopt(self, cid: int, path: Path) -> None:
        """Take client ``cid``'s state from a checkpoint file (resume)."""
        self.resident.pop(cid, None)
        if self.dir is not None:
            shutil.copyfile(path, self._path(cid))
            self.spilled.add(cid)
        else:
            cl = self.factory(cid)
            load_client_state(cl, load_tree(path, self.device))
            self.resident[cid] = cl

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
