"""The run file's ``layers/`` group as one row per (round, layer): the rank of the broadcast
and of the clients' uploads (``Run.layers``)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd


def layer_table(g: h5py.Group | None, n: int, round_no: np.ndarray,
            sent: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (round, layer): K of the broadcast and of the clients' uploads (``sent``:
    [round, client] the uploads that count; a dense upload and an absent one are both -1)."""
    cols = ["round", "layer", "name", "rows", "cols", "full_rank", "rank_down", "rank_up_min",
            "rank_up_mean", "rank_up_max", "dense_up_clients", "rank_down_share",
            "rank_up_share"]
    if g is None or "names" not in g or len(g["names"]) == 0:
        return pd.DataFrame({c: [] for c in cols})
    names = [x.decode() if isinstance(x, bytes) else str(x) for x in g["names"][:]]
    nl = len(names)
    shape = np.asarray(g["shape"][:], np.int64).reshape(nl, 2)
    full = shape.min(axis=1)
    down = (np.asarray(g["rank_down"][:n, :nl], np.int64) if "rank_down" in g
            else np.full((n, nl), -1))
    up = (np.asarray(g["rank_up"][:n, :, :nl], np.float64) if "rank_up" in g
          else np.full((n, 0, nl), np.nan))
    dense_up = ((up == -1) & (sent[:, :, None] if sent is not None and sent.shape ==
                              up.shape[:2] else True)).sum(axis=1)
    # rank of a factorised upload; dense uploads (-1) and non-participants (< -1) are left out
    fac = np.where(up >= 0, up, np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            up_min, up_mean, up_max = (np.nanmin(fac, axis=1), np.nanmean(fac, axis=1),
                                       np.nanmax(fac, axis=1))
    down_f = np.where(down >= 0, down, np.nan).astype(np.float64)
    df = pd.DataFrame({
        "round": np.repeat(round_no, nl), "layer": np.tile(np.arange(nl), n),
        "name": np.tile(np.array(names, dtype=object), n),
        "rows": np.tile(shape[:, 0], n), "cols": np.tile(shape[:, 1], n),
        "full_rank": np.tile(full, n), "rank_down": down.reshape(-1),
        "rank_up_min": up_min.reshape(-1), "rank_up_mean": up_mean.reshape(-1),
        "rank_up_max": up_max.reshape(-1), "dense_up_clients": dense_up.reshape(-1),
        "rank_down_share": (down_f / full).reshape(-1),
        "rank_up_share": (up_mean / full).reshape(-1),
    })
    return df[cols]
