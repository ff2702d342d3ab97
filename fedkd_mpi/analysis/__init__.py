"""Post-hoc analysis of run files: tidy pandas tables, reports, comparisons, exports.

>>> from fedkd_mpi.analysis import load
>>> run = load("runs/default.h5")  # doctest: +SKIP
>>> run.rounds, run.clients, run.layers, run.timing, run.summary  # doctest: +SKIP

Nothing here imports mpi4py or torch; see docs/analysis.md. The names below are imported on
first use, so that ``fedkd-mpi run`` (which builds the analysis subcommands' parsers) does not
pay for pandas.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SUPPORTED_VERSIONS", "Run", "RunFileError", "RunSummary", "config_get", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("fedkd_mpi.analysis.reader"), name)
    raise AttributeError(f"module 'fedkd_mpi.analysis' has no attribute {name!r}")
