"""Datasets and partitioners. ``load_federated`` is the one entry point used by the runtime."""

from fedkd_mpi.data.federated import ClientData, FederatedData, load_federated

__all__ = ["ClientData", "FederatedData", "load_federated"]
