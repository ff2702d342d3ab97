"""Local training only: each client trains its own ``local.model``; nothing is sent.
With one client (``data.num_clients=1``) this is centralized training on the pooled data."""

from __future__ import annotations

from fedkd_mpi.algorithms.base import Algorithm


class Local(Algorithm):
    """Each client trains its own model on its own data; nothing is communicated."""

    name = "local"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.private_role = cfg.local.model
