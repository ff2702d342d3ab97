"""Shared matplotlib setup (Agg backend: files only, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

MODEL_STYLE = {"mentor": {"color": "tab:blue", "marker": "o"},
               "mentee": {"color": "tab:orange", "marker": "s"}}


def figure(w: float = 6.4, h: float = 4.0, **kw) -> tuple[Figure, object]:
    fig, ax = plt.subplots(figsize=(w, h), layout="constrained", **kw)
    return fig, ax


def log_if_decades(ax, values: np.ndarray, axis: str = "x") -> bool:
    """Log scale when the positive values span at least a decade."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) and v.max() / v.min() >= 10.0:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        return True
    return False


def save(fig: Figure, out: Path, name: str, fmt: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.{fmt}"
    fig.savefig(path, dpi=110 if fmt == "png" else None)
    plt.close(fig)
    return path


def pretty_metric(name: str) -> str:
    return {"accuracy": "accuracy", "f1": "F1 (positive class)", "macro_f1": "macro-F1"}.get(
        name, name.replace("_", " "))
