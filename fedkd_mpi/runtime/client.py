"""One client's state and its local work: training, update extraction, evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedkd_mpi.algorithms import Algorithm, ClientState
from fedkd_mpi.algorithms.base import NonFiniteError, trainable  # noqa: F401 (their old home)
from fedkd_mpi.config import Config
from fedkd_mpi.data import ClientData


@dataclass
class Client:
    """Everything that belongs to one client and never leaves its rank."""

    cid: int
    data: ClientData
    state: ClientState  # the algorithm's and its codec's state (typed, checkpointed)
    private: nn.Module | None = None  # the mentor (FedKD / local)
    proj: nn.ModuleList | None = None  # W^h
    opt_private: torch.optim.Optimizer | None = None
    opt_shared: torch.optim.Optimizer | None = None


def make_optimizer(params: list[nn.Parameter], kind: str, lr: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def local_train(alg: Algorithm, client: Client, shared: nn.Module | None, cfg: Config,
                rnd: int, device: torch.device) -> dict[str, float]:
    """This round's local work of ``client``: the algorithm's own
    :meth:`~fedkd_mpi.algorithms.Algorithm.local_round` (``cfg`` is the algorithm's)."""
    if cfg is not alg.cfg and cfg != alg.cfg:
        raise ValueError("local_train: cfg differs from the algorithm's own cfg")
    return alg.local_round(client, shared, rnd, device)
