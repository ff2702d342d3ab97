"""One client's state and its local work: training, update extraction, evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fedkd_mpi.algorithms import Algorithm, ClientState
from fedkd_mpi.config import Config
from fedkd_mpi.data import ClientData
from fedkd_mpi.seeding import torch_seed


class NonFiniteError(FloatingPointError):
    """A loss or update became NaN/Inf."""


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


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def local_train(alg: Algorithm, client: Client, shared: nn.Module | None, cfg: Config,
                rnd: int, device: torch.device) -> dict[str, float]:
    """Run this round's local epochs/steps; returns the mean of each logged loss part."""
    tc = cfg.train
    seed = torch_seed(cfg.seed, "train", rnd, client.cid)
    torch.manual_seed(seed)  # dropout: keyed by (seed, round, client), never by rank
    gen = torch.Generator().manual_seed(seed)
    n = client.data.num_train
    per_epoch = math.ceil(n / tc.batch_size)
    steps = tc.local_steps if tc.local_steps is not None else tc.local_epochs * per_epoch
    models = [m for m in (client.private, shared, client.proj) if m is not None]
    shared_params = [] if shared is None else trainable(shared)
    for m in models:
        m.train()
    sums: dict[str, float] = {}
    if shared_params:
        alg.begin_local(shared_params, client.state)
    perm = torch.randperm(n, generator=gen)
    for step in range(steps):
        j = step % per_epoch
        if j == 0 and step > 0:
            perm = torch.randperm(n, generator=gen)
        idx = perm[j * tc.batch_size : (j + 1) * tc.batch_size]
        x = client.data.train_x[idx].to(device)
        y = client.data.train_y[idx].to(device)
        out_p = client.private(x) if client.private is not None else None
        out_s = shared(x) if shared is not None else None
        total, parts = alg.loss(out_p, out_s, y, client.proj)
        if not torch.isfinite(total):
            raise NonFiniteError(f"client {client.cid}, round {rnd + 1}, step {step}: "
                                 f"non-finite training loss {float(total.detach())}")
        for opt in (client.opt_private, client.opt_shared):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in (client.opt_private, client.opt_shared):
            if opt is not None:
                opt.step()
        if shared_params:
            alg.after_step(client.state, shared_params)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / steps for k, v in sums.items()}
