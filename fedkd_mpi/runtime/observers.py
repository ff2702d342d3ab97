"""What rank 0 tells the outside world after every round, beside the HDF5 file (the record of
truth): user callbacks (``runtime.callbacks``) and TensorBoard (``runtime.tensorboard``).

TensorBoard tags are the HDF5 dataset names, so a curve reads the same in both:
``rounds/<name>`` for every number of the round's record (metrics, ``bytes_up``,
``bytes_down``, ``energy_threshold``, times);
``clients/<name>/<client>`` for each participating client's metrics, train losses and bytes
(the first :data:`TB_MAX_CLIENTS` clients); ``layers/rank_down/<layer>`` and
``layers/rank_up_mean/<layer>`` for the SVD rank of each factorised layer (dense: not written).
The step is the 1-based round. Written with ``tensorboardX`` (requirements.txt), else
``torch.utils.tensorboard`` (the ``tensorboard`` package).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedkd_mpi.config import Config, ConfigError

#: a callback gets one dict: round (1-based), the ``rounds/`` record, the ``clients/`` arrays,
#: and ``ranks`` (``rank_up`` [client, layer], ``rank_down`` [layer]; None when not given)
RoundCallback = Callable[[dict[str, Any]], None]
#: per-client TensorBoard scalars are written for the clients with the lowest ids only
TB_MAX_CLIENTS = 64
TB_CLIENT_KEYS = ("mentor_metric", "mentee_metric", "mentor_train_loss", "mentee_train_loss",
                  "bytes_up", "bytes_down")


def load_callbacks(cfg: Config) -> list[RoundCallback]:
    """Import every ``runtime.callbacks`` entry (``module:function``); ConfigError if one is
    not importable or not callable."""
    from fedkd_mpi.registry import _import_path

    out = []
    for i, spec in enumerate(cfg.runtime.callbacks):
        field = f"runtime.callbacks[{i}]"
        if ":" not in spec:
            raise ConfigError(f"config error: '{field}': {spec!r} is not of the form "
                              "module:function")
        fn = _import_path(spec, field)  # PluginError (a ConfigError): one line
        if not callable(fn):
            raise ConfigError(f"config error: '{field}': {spec} is not callable")
        out.append(fn)
    return out


def tensorboard_backend() -> str | None:
    """``tensorboardX`` or ``torch.utils.tensorboard`` (whichever is installed), else None."""
    if importlib.util.find_spec("tensorboardX") is not None:
        return "tensorboardX"
    if importlib.util.find_spec("tensorboard") is not None:
        return "torch.utils.tensorboard"
    return None


def check_tensorboard(cfg: Config) -> None:
    """``runtime.tensorboard`` set: a writer package is installed and the directory can be one
    (validate and rank 0 before any work); ConfigError with one line otherwise."""
    logdir = cfg.runtime.tensorboard
    if not logdir:
        return
    if tensorboard_backend() is None:
        raise ConfigError("config error: 'runtime.tensorboard': writing TensorBoard files needs "
                          "the package tensorboardX (pip install tensorboardX==2.6.5) or "
                          "tensorboard; neither is installed")
    p = Path(logdir)
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"config error: 'runtime.tensorboard' ({logdir}): {probe} is not a "
                          "directory")


def _writer(logdir: str) -> Any:
    if tensorboard_backend() == "tensorboardX":
        from tensorboardX import SummaryWriter
    else:
        from torch.utils.tensorboard import SummaryWriter
    Path(logdir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(logdir)


def _finite(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class Observers:
    """Rank 0's per-round observers."""

    def __init__(self, cfg: Config) -> None:
        self.callbacks = load_callbacks(cfg)
        self.tensorboard = None
        if cfg.runtime.tensorboard:
            check_tensorboard(cfg)
            self.tensorboard = _writer(cfg.runtime.tensorboard)

    def round_done(self, record: dict[str, Any], clients: dict[str, np.ndarray],
                   ranks: dict[str, Any] | None = None) -> None:
        """After the round is in the HDF5 file. ``ranks``: ``rank_up`` [client, layer] and
        ``rank_down`` [layer] (-1 = sent dense), optionally ``names`` (the layers')."""
        event = {"round": int(record["round"]), "record": dict(record),
                 "clients": {k: np.asarray(v) for k, v in clients.items()},
                 "ranks": None if ranks is None else {k: np.asarray(v) if k != "names" else v
                                                      for k, v in ranks.items()}}
        for fn in self.callbacks:
            fn(event)
        if self.tensorboard is not None:
            self._tensorboard(event)

    def _tensorboard(self, event: dict[str, Any]) -> None:
        tb, step, record = self.tensorboard, event["round"], event["record"]
        for key, value in record.items():
            x = _finite(value)
            if key != "round" and x is not None:
                tb.add_scalar(f"rounds/{key}", x, step)
        cl = event["clients"]
        part = cl.get("participated")
        for key in TB_CLIENT_KEYS:
            if key not in cl:
                continue
            for c, v in enumerate(np.asarray(cl[key])[:TB_MAX_CLIENTS].tolist()):
                x = _finite(v)
                if x is not None and (part is None or part[c]):
                    tb.add_scalar(f"clients/{key}/{c}", x, step)
        ranks = event["ranks"]
        if ranks:
            names = list(ranks.get("names") or [])
            down = np.asarray(ranks.get("rank_down", []), np.float64).reshape(-1)
            up = np.asarray(ranks.get("rank_up", np.zeros((0, len(down)))), np.float64)
            up = up.reshape(-1, len(down)) if len(down) else up.reshape(0, 0)
            for j in range(len(down)):
                name = names[j] if j < len(names) else f"{j:03d}"
                if down[j] >= 0:
                    tb.add_scalar(f"layers/rank_down/{name}", down[j], step)
                col = up[:, j][up[:, j] >= 0] if up.size else up
                if col.size:
                    tb.add_scalar(f"layers/rank_up_mean/{name}", float(col.mean()), step)
        tb.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
