"""Per-client scoring, the paper's protocol ("the average performance of local mentor models
on the local data"): a model's metric at the run's last evaluated round, client by client,
read as the mean over clients, their spread, the worst client, the 10th percentile and the
pooled value; and the paired difference of two runs over the same clients.

Nothing here picks a best round: the last evaluated round is the one reported. ``split="val"``
reads the validation split (``data.val_fraction`` > 0), the one to choose settings on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from fedkd_mpi.analysis.reader import Run


@dataclass(frozen=True)
class Spread:
    """One model's metric over the clients at the last evaluated round."""

    model: str
    split: str  # test | val
    round: int
    n: int  # clients with a value (sampled and evaluated in that round)
    mean: float  # mean over clients
    std: float  # sample std over clients (ddof 1; NaN for one client)
    worst: float
    worst_client: int
    p10: float  # 10th percentile over clients (linear interpolation)
    pooled: float  # accuracy over the union of the clients' held-out examples; NaN otherwise


@dataclass(frozen=True)
class Paired:
    """``run`` minus ``base`` on the same clients, each at its last evaluated round."""

    n: int
    mean: float  # mean over clients of the per-client difference
    lo: float  # 95 % t-interval of that mean (NaN for fewer than 2 clients)
    hi: float
    wins: int  # clients where run > base
    losses: int  # clients where run < base


def column(run: Run, model: str, split: str = "test", name: str | None = None) -> str:
    """The ``clients`` column of ``model``'s metric ``name`` (headline when None)."""
    col = run.metric_column(model, name)
    return col if split == "test" else f"{split}_{col}"


def last_values(run: Run, model: str, split: str = "test",
                name: str | None = None) -> tuple[int, pd.Series]:
    """(round, per-client values indexed by client) at the last round where any client of
    ``model`` has a finite value; (0, empty) when there is none."""
    col, c = column(run, model, split, name), run.clients
    if col not in c or not len(c):
        return 0, pd.Series(dtype=np.float64)
    ok = c[np.isfinite(c[col].to_numpy(float))]
    if not len(ok):
        return 0, pd.Series(dtype=np.float64)
    rnd = int(ok["round"].max())
    last = ok[ok["round"] == rnd]
    return rnd, pd.Series(last[col].to_numpy(float), index=last["client"].to_numpy(int))


def _sizes(run: Run, split: str) -> np.ndarray | None:
    hist = run.partition.get(f"{split}_label_hist")
    return None if hist is None else np.asarray(hist, np.float64).sum(axis=1)


def spread(run: Run, model: str, split: str = "test", name: str | None = None
           ) -> Spread | None:
    """``model``'s metric over the clients (None when the run has none for it)."""
    rnd, v = last_values(run, model, split, name)
    if not len(v):
        return None
    x = v.to_numpy()
    pooled = math.nan
    if (name or run.summary.metric_name) == "accuracy":
        sizes = _sizes(run, split)
        if sizes is not None:
            w = sizes[v.index.to_numpy()]
            pooled = float((x * w).sum() / w.sum()) if w.sum() > 0 else math.nan
    return Spread(model, split, rnd, len(x), float(x.mean()),
                  float(x.std(ddof=1)) if len(x) > 1 else math.nan, float(x.min()),
                  int(v.idxmin()), float(np.percentile(x, 10)), pooled)


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t-interval of the mean of ``d`` (NaN, NaN for fewer than 2 values)."""
    d = np.asarray(d, np.float64)
    if len(d) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return float(d.mean()) - half, float(d.mean()) + half


def paired(run: Run, base: Run, model: str, base_model: str | None = None,
           split: str = "test", name: str | None = None) -> Paired | None:
    """Per-client ``run`` − ``base`` (``base_model`` defaults to ``model``), over the clients
    both have; None when they share none."""
    _, a = last_values(run, model, split, name)
    _, b = last_values(base, base_model or model, split, name)
    common = a.index.intersection(b.index)
    if not len(common):
        return None
    d = a[common].to_numpy() - b[common].to_numpy()
    lo, hi = t_interval(d)
    return Paired(len(d), float(d.mean()), lo, hi, int((d > 0).sum()), int((d < 0).sum()))


def spread_rows(run: Run) -> list[list[str]]:
    """(label, value) rows for the summary and ``report``: every model and split recorded."""
    rows = []
    for split in ("test", "val"):
        for m in ("mentor", "mentee"):
            s = spread(run, m, split)
            if s is None:
                continue
            where = "held-out" if split == "test" else "validation"
            pooled = "" if math.isnan(s.pooled) else f", pooled {s.pooled:.4f}"
            std = "" if math.isnan(s.std) else f" ± {s.std:.4f}"
            rows.append([f"{m} {where} per client (round {s.round})",
                         f"mean {s.mean:.4f}{std}, worst {s.worst:.4f} (client "
                         f"{s.worst_client}), p10 {s.p10:.4f}{pooled} ({s.n} clients)"])
    return rows


def paired_text(p: Paired | None) -> str:
    if p is None:
        return "no client in common"
    ci = "" if math.isnan(p.lo) else f", 95 % CI [{p.lo:+.4f}, {p.hi:+.4f}]"
    return f"{p.mean:+.4f}{ci}; better on {p.wins}, worse on {p.losses} of {p.n} clients"
