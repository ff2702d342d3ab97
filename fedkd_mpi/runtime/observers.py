"""What rank 0 tells the outside world after every round, beside the HDF5 file (the record of
truth): user callbacks (``runtime.callbacks``) and TensorBoard (``runtime.tensorboard``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedkd_mpi.config import Config, ConfigError

#: a callback gets one dict: round (1-based), the ``rounds/`` record, the ``clients/`` arrays
RoundCallback = Callable[[dict[str, Any]], None]


def load_callbacks(cfg: Config) -> list[RoundCallback]:
    """Import every ``runtime.callbacks`` entry (``module:function``); ConfigError if one is
    not importable or not callable."""
    from fedkd_mpi.registry import PluginError, _import_path

    out = []
    for i, spec in enumerate(cfg.runtime.callbacks):
        field = f"runtime.callbacks[{i}]"
        if ":" not in spec:
            raise ConfigError(f"config error: '{field}': {spec!r} is not of the form "
                              "module:function")
        try:
            fn = _import_path(spec, field)
        except PluginError:
            raise
        if not callable(fn):
            raise ConfigError(f"config error: '{field}': {spec} is not callable")
        out.append(fn)
    return out


class Observers:
    """Rank 0's per-round observers."""

    def __init__(self, cfg: Config) -> None:
        self.callbacks = load_callbacks(cfg)
        self.tensorboard = None  # set up by runtime.tensorboard (see below)

    def round_done(self, record: dict[str, Any], clients: dict[str, np.ndarray]) -> None:
        event = {"round": int(record["round"]), "record": dict(record),
                 "clients": {k: np.asarray(v) for k, v in clients.items()}}
        for fn in self.callbacks:
            fn(event)

    def close(self) -> None:
        pass
