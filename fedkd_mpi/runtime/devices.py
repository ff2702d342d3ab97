"""Device choice per rank from the node-local rank (an MPI shared-memory split).

The node-local position comes from ``MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)``, not from a
launcher-specific variable, so it is the same under mpiexec, srun or any other launcher.
:func:`choose_device` is the pure decision (unit-tested with fake GPU counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from fedkd_mpi.config import RuntimeConfig


@dataclass(frozen=True)
class NodeInfo:
    """Where a rank sits on its node."""

    host: str
    node_ranks: int  # ranks on this node (server included)
    node_clients: int  # client ranks (rank >= 1) on this node
    client_index: int  # this rank's index among them (0 for the server)


def node_info(comm: MPI.Intracomm) -> NodeInfo:
    """Collective over ``comm``: this rank's :class:`NodeInfo`."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        is_client = 1 if comm.Get_rank() > 0 else 0
        flags = np.zeros(node.Get_size(), dtype=np.int64)
        node.Allgather(np.array([is_client], dtype=np.int64), flags)
        index = int(flags[: node.Get_rank()].sum()) if is_client else 0
        return NodeInfo(MPI.Get_processor_name(), node.Get_size(), int(flags.sum()), index)
    finally:
        node.Free()


def choose_device(rank: int, info: NodeInfo, n_gpus: int, device: str, server_device: str,
                  ranks_per_gpu: int) -> tuple[str, str]:
    """(torch device string, error). Client ranks with ``device: auto`` take GPU
    ``client_index mod n_gpus`` when the node has GPUs, CPU otherwise; the server stays on
    ``server_device``. More client ranks on a node than ``n_gpus * ranks_per_gpu`` is an
    error (one line naming the fields)."""
    if rank == 0:
        if server_device == "cuda":
            if n_gpus == 0:
                return "cpu", ("config error: 'runtime.server_device' is 'cuda' but CUDA is "
                               f"not available on rank 0 ({info.host}) (valid: cpu)")
            return "cuda:0", ""
        return "cpu", ""
    if device == "cpu" or (device == "auto" and n_gpus == 0):
        return "cpu", ""
    if n_gpus == 0:
        return "cpu", (f"config error: 'runtime.device' is 'cuda' but CUDA is not available "
                       f"on rank {rank} ({info.host}) (valid: auto, cpu)")
    if info.node_clients > n_gpus * ranks_per_gpu:
        need = -(-info.node_clients // n_gpus)
        return "cpu", (f"config error: {info.node_clients} client ranks on node {info.host} "
                       f"but {n_gpus} GPU(s) and 'runtime.ranks_per_gpu' is {ranks_per_gpu}; "
                       f"start at most {n_gpus * ranks_per_gpu} client ranks per node or set "
                       f"runtime.ranks_per_gpu={need} (or runtime.device=cpu)")
    return f"cuda:{info.client_index % n_gpus}", ""


def select_device(cfg: RuntimeConfig, comm: MPI.Intracomm) -> tuple[torch.device, str]:
    """Collective. Return (device, error); error is '' or a one-line message."""
    info = node_info(comm)
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name, error = choose_device(comm.Get_rank(), info, n_gpus, cfg.device, cfg.server_device,
                                cfg.ranks_per_gpu)
    return torch.device(name), error
