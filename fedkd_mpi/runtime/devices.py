"""Device choice per rank from the node-local rank (an MPI shared-memory split)."""

from __future__ import annotations

import numpy as np
import torch
from mpi4py import MPI

from fedkd_mpi.config import RuntimeConfig


def node_local_client_index(comm: MPI.Intracomm) -> int:
    """This rank's index among the *client* ranks (rank >= 1) of its node."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        is_client = 1 if comm.Get_rank() > 0 else 0
        flags = np.zeros(node.Get_size(), dtype=np.int64)
        node.Allgather(np.array([is_client], dtype=np.int64), flags)
        return int(flags[: node.Get_rank()].sum()) if is_client else 0
    finally:
        node.Free()


def select_device(cfg: RuntimeConfig, comm: MPI.Intracomm) -> tuple[torch.device, str]:
    """Return (device, error); error is '' or a one-line message naming the bad field."""
    local = node_local_client_index(comm)
    has_cuda = torch.cuda.is_available()
    if comm.Get_rank() == 0:
        if cfg.server_device == "cuda" and not has_cuda:
            return torch.device("cpu"), ("config error: 'runtime.server_device' is 'cuda' but "
                                         "CUDA is not available on rank 0 (valid: cpu)")
        return torch.device(cfg.server_device), ""
    if cfg.device == "cpu" or (cfg.device == "auto" and not has_cuda):
        return torch.device("cpu"), ""
    if not has_cuda:
        return torch.device("cpu"), (f"config error: 'runtime.device' is 'cuda' but CUDA is not "
                                     f"available on rank {comm.Get_rank()} (valid: auto, cpu)")
    return torch.device("cuda", local % torch.cuda.device_count()), ""
