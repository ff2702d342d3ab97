"""Algorithms: each owns its local objective and both ends of its payload."""

from fedkd_mpi.algorithms.base import Algorithm, build_algorithm

__all__ = ["Algorithm", "build_algorithm"]
