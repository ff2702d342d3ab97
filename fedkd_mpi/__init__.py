"""fedkd_mpi: FedKD (Wu et al., Nat. Commun. 13:2032, 2022) simulated over MPI.

From a script or a notebook (docs/api.md): ``fedkd_mpi.Config`` and ``fedkd_mpi.run``;
imported on first use, so that ``import fedkd_mpi`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("Config", "ConfigError", "RunError", "RunResult", "run")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from fedkd_mpi import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedkd_mpi' has no attribute {name!r}")
