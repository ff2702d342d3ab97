"""Classification metrics (numpy) and held-out evaluation of a model.

Names: ``accuracy``, ``f1`` (F1 of the positive class 1; binary tasks only), ``macro_f1``
(unweighted mean of per-class F1 over the classes present in labels or predictions).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedkd_mpi.models.base import logits_of

METRICS = ("accuracy", "f1", "macro_f1")


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y), np.asarray(pred)
    return float((y == pred).mean()) if len(y) else 0.0


def f1_of(y: np.ndarray, pred: np.ndarray, cls: int) -> float:
    """F1 of one class: 2TP / (2TP + FP + FN); 0 when the class is absent and never predicted."""
    y, pred = np.asarray(y), np.asarray(pred)
    tp = int(((pred == cls) & (y == cls)).sum())
    fp = int(((pred == cls) & (y != cls)).sum())
    fn = int(((pred != cls) & (y == cls)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def f1(y: np.ndarray, pred: np.ndarray) -> float:
    """F1 of the positive class (label 1)."""
    return f1_of(y, pred, 1)


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    classes = np.union1d(np.unique(y), np.unique(pred))
    return float(np.mean([f1_of(y, pred, int(c)) for c in classes])) if len(classes) else 0.0


FUNCS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1}


def metric_names(headline: str, num_classes: int) -> list[str]:
    """Every metric recorded for a task, the headline first (``f1`` only for binary tasks)."""
    names = [m for m in METRICS if m != "f1" or num_classes == 2]
    return [headline] + [m for m in names if m != headline]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> np.ndarray:
    """Arg-max predictions of ``model`` (eval mode) on ``x``."""
    model.eval()
    out = [logits_of(model, x[i : i + batch].to(device)).argmax(-1).cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
             device: torch.device, names: list[str]) -> dict[str, float]:
    """Every metric in ``names`` of ``model`` on held-out ``(x, y)``."""
    pred = predict(model, x, batch, device)
    yy = y.cpu().numpy()
    return {n: FUNCS[n](yy, pred) for n in names}
