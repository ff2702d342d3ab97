"""Algorithms: each owns its models' roles, its local objective and both ends of its payload.
Built-ins: fedkd, fedavg (and its codec aliases fedpaq, topk, powersgd), fedprox, scaffold,
local."""

from fedkd_mpi.algorithms.base import Algorithm, ClientState, build_algorithm

__all__ = ["Algorithm", "ClientState", "build_algorithm"]
