"""fedkd_mpi: FedKD (Wu et al., Nat. Commun. 13:2032, 2022) simulated over MPI."""

__version__ = "0.1.0"
