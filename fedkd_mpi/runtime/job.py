"""One job on every rank: set-up (models built, probed and bound to the algorithm, the
memory budget checked), then the server loop (rank 0) or the client loop (other ranks).

Set-up and run are separate so that the launcher can gather every rank's set-up error and
stop cleanly (exit 2) before any rank trains.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from fedkd_mpi.aggregators import aggregator_of
from fedkd_mpi.algorithms import build_algorithm
from fedkd_mpi.comm.mpi import Transport
from fedkd_mpi.comm.placement import Placement
from fedkd_mpi.config import Config
from fedkd_mpi.data import FederatedData
from fedkd_mpi.models import build_for, probe
from fedkd_mpi.runtime.checkpoint import Checkpointer, StopFlag
from fedkd_mpi.runtime.client_loop import client_main
from fedkd_mpi.runtime.context import Context, row_layout
from fedkd_mpi.runtime.residency import available_memory_bytes, budget_error, per_client_bytes
from fedkd_mpi.runtime.server_loop import server_main
from fedkd_mpi.seeding import torch_seed
from fedkd_mpi.tensors import TensorSpec


def broadcast_state(comm: MPI.Intracomm, model: torch.nn.Module) -> None:
    """Rank 0's parameters (all of them, frozen included) to every rank, as one float32 Bcast."""
    tensors = list(model.state_dict().values())
    flat = (torch.cat([t.reshape(-1).float() for t in tensors]).numpy()
            if comm.Get_rank() == 0 else np.empty(sum(t.numel() for t in tensors), np.float32))
    comm.Bcast(flat, root=0)
    pos = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.from_numpy(flat[pos : pos + t.numel()]).view_as(t))
            pos += t.numel()


def setup(cfg: Config, comm: MPI.Intracomm, device: torch.device, fed: FederatedData,
          placement: Placement, node_ranks: int, resume: bool) -> tuple[Context, str]:
    """Collective: the run's :class:`Context` on this rank and its set-up error ('' if none)."""
    rank = comm.Get_rank()
    alg = build_algorithm(cfg)
    transport = Transport(comm, placement, cfg.runtime.poll_interval_ms / 1000.0)
    shared, params = None, []
    if alg.communicates:
        shared = build_for(cfg, alg.shared_role, fed.num_classes, torch_seed(cfg.seed, "init"),
                           cfg.model.freeze_embeddings)
    ckpt = Checkpointer(cfg, comm, transport.poll_s)
    start, ckdir, server = 0, None, None
    if resume:
        start, ckdir, server = ckpt.load()
    specs: list[TensorSpec] = []
    if shared is not None:
        if server is not None:  # rank 0: the shared model of the checkpoint
            shared.load_state_dict(server["shared"])
        broadcast_state(comm, shared)  # every replica starts from rank 0's bits
        shared.to(device)
        named = [(n, p) for n, p in shared.named_parameters() if p.requires_grad]
        specs = [TensorSpec(n, tuple(p.shape)) for n, p in named]
        params = [p for _, p in named]
    shapes, private = {}, None
    if rank > 0:  # the models this rank trains, probed on a real example
        x = fed.clients[placement.clients_of(rank)[0]].train_x[:2].to(device)
        if alg.private_role is not None:
            private = build_for(cfg, alg.private_role, fed.num_classes, 0,
                                cfg.model.freeze_private_embeddings).to(device)
            shapes[alg.private_role] = probe(private, x)
        if shared is not None:
            shapes[alg.shared_role] = probe(shared, x)
    alg.bind(specs, shapes)
    if server is not None:  # rank 0: the algorithm's and codec's server state
        alg.server.load_state_dict(server["server_state"])
    aggregator = aggregator_of(cfg)
    if server is not None:  # rank 0: the aggregator's memory (server momentum, ...)
        aggregator.load_state_dict(server.get("aggregator", {}))
    ctx = Context(cfg, comm, device, alg, aggregator, placement, transport, shared,
                  params, ckpt, StopFlag(), start, ckdir, row_layout(cfg, alg))
    error = ""
    if rank > 0:
        error = _memory_error(ctx, private, len(placement.clients_of(rank)), node_ranks)
    return ctx, error


def _memory_error(ctx: Context, private: torch.nn.Module | None, hosted: int,
                  node_ranks: int) -> str:
    """'' when ``runtime.resident_clients`` clients' private state fits this rank's share of
    the node's memory and the spilled rest fits the spill directory; else one line."""
    cfg = ctx.cfg
    proj = ctx.alg.make_projection(0) if ctx.shared is not None else None
    shared = sum(p.numel() for p in ctx.params)
    each = per_client_bytes(private, proj, shared, cfg.train.optimizer)
    spill = Path(cfg.runtime.spill_dir or tempfile.gettempdir())
    while not spill.exists():
        spill = spill.parent
    return budget_error(each, hosted, cfg.runtime.resident_clients, node_ranks,
                        available_memory_bytes(), shutil.disk_usage(spill).free,
                        ctx.comm.Get_rank())


def run(ctx: Context, fed: FederatedData, attrs: dict[str, object]) -> int:
    """Run every round (from the checkpoint when resuming).

    Returns 0, or :data:`~fedkd_mpi.runtime.checkpoint.EXIT_INTERRUPTED` on every rank when a
    signal stopped the run at a round boundary after a checkpoint; raises on any failure (the
    caller aborts the job).
    """
    ctx.stop.install()
    try:
        if ctx.comm.Get_rank() == 0:
            return server_main(ctx, fed, attrs)
        return client_main(ctx, fed)
    finally:
        ctx.stop.restore()
