"""Datasets and partitioners. ``load_federated`` is the one entry point used by the runtime;
``check_data`` validates the same steps without building tensors. New datasets and
partitioners subclass :class:`Dataset` / :class:`Partitioner` (see :mod:`fedkd_mpi.data.base`).
"""

from fedkd_mpi.data.base import (
    Corpus,
    DataError,
    Dataset,
    Partitioner,
    dataset_of,
    partitioner_of,
)
from fedkd_mpi.data.federated import ClientData, FederatedData, check_data, load_federated

__all__ = [
    "ClientData",
    "Corpus",
    "DataError",
    "Dataset",
    "FederatedData",
    "Partitioner",
    "check_data",
    "dataset_of",
    "load_federated",
    "partitioner_of",
]
