"""Client placement: which rank hosts which client, one object for launch, transport and
server alike (FedLab's coordinator).

Rank 0 is the server and hosts no client; client ranks 1..W-1 get contiguous, near-equal
blocks of client ids (``np.array_split``), so client id order is rank order and a gathered
buffer lists clients by id. Static for the whole run: a client's private state never moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Placement:
    """``num_clients`` clients over ``world_size`` ranks (rank 0: the server)."""

    num_clients: int
    world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 2:
            raise ValueError(f"a placement needs >= 2 ranks, got {self.world_size}")

    @cached_property
    def counts(self) -> np.ndarray:
        """int64[world_size]: clients hosted by each rank (0 for rank 0)."""
        blocks = np.array_split(np.arange(self.num_clients), self.world_size - 1)
        return np.array([0] + [len(b) for b in blocks], dtype=np.int64)

    @cached_property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def clients_of(self, rank: int) -> list[int]:
        """Client ids hosted by ``rank``, ascending."""
        start = int(self.starts[rank])
        return list(range(start, start + int(self.counts[rank])))

    def rank_of(self, cid: int) -> int:
        """The rank hosting client ``cid``."""
        if not 0 <= cid < self.num_clients:
            raise IndexError(f"client {cid} outside [0, {self.num_clients})")
        return int(np.searchsorted(self.starts, cid, side="right")) - 1

    def local_index(self, cid: int) -> int:
        """Position of ``cid`` among its rank's clients."""
        return cid - int(self.starts[self.rank_of(cid)])

    @cached_property
    def client_rank(self) -> np.ndarray:
        """int64[num_clients]: the hosting rank of every client (stored in the run file)."""
        return np.repeat(np.arange(self.world_size), self.counts).astype(np.int64)
