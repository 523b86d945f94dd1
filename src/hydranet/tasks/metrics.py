"""Metrics on whole splits with numpy (AUC from ranks), never averaged per batch."""

from __future__ import annotations

import numpy as np

# Which way each metric improves, for early stopping and run comparisons.
HIGHER_IS_BETTER = {
    "auc": True,
    "accuracy": True,
    "macro_f1": True,
    "micro_auc": True,
    "macro_auc": True,
    "r2": True,
    "logloss": False,
    "rmse": False,
    "mae": False,
    "loss": False,
}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC from average ranks (Mann-Whitney U); ties count one half."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values; each run gets the mean of its 1-based ranks
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def logloss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``p`` against 0/1 labels ``y``."""
    p = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def macro_f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``pred`` or ``y``."""
    f1s = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        if tp + fp + fn == 0:
            continue  # class absent from both: not part of the macro average
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")
