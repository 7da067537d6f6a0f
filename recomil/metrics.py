"""Slide-level classification metrics; undefined ones are None (never a made-up number)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score, roc_curve


def auc_score(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC AUC (binary: of class 1; more classes: macro one-vs-rest). None if a class is missing.

    Args:
        labels: ``[S]`` int class indices; probs: ``[S, C]`` class probabilities.
    """
    c = probs.shape[1]
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        return None
    if c == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(np.unique(labels)) < c:
        return None
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(c))))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """``auc``, ``acc``, ``balanced_acc``, ``f1``; binary adds ``sensitivity``, ``specificity``;
    more classes add ``auc_<k>`` (one-vs-rest) and use macro F1.

    Args:
        labels: ``[S]`` int class indices; probs: ``[S, C]`` class probabilities.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    c = probs.shape[1]
    pred = probs.argmax(1)
    out: dict[str, float | None] = {"auc": auc_score(labels, probs)}
    if len(labels) == 0:
        return {**out, "acc": None, "balanced_acc": None, "f1": None}
    out["acc"] = float((pred == labels).mean())
    present = np.unique(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["balanced_acc"] = float(balanced_accuracy_score(labels, pred)) if len(present) > 1 else None
    if c == 2:
        out["f1"] = float(f1_score(labels, pred, zero_division=0))
        tp = int(((pred == 1) & (labels == 1)).sum())
        tn = int(((pred == 0) & (labels == 0)).sum())
        pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
        out["sensitivity"] = tp / pos if pos else None
        out["specificity"] = tn / neg if neg else None
    else:
        out["f1"] = float(f1_score(labels, pred, average="macro", labels=list(range(c)), zero_division=0))
        for k in range(c):
            yk = (labels == k).astype(int)
            out[f"auc_{k}"] = float(roc_auc_score(yk, probs[:, k])) if 0 < yk.sum() < len(yk) else None
    return out


def bootstrap_auc(labels: np.ndarray, probs: np.ndarray, n: int, seed: int) -> tuple[float | None, float | None]:
    """95% percentile bootstrap interval of the AUC (resamples lacking a class are skipped)."""
    if n <= 0 or auc_score(labels, probs) is None:
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        a = auc_score(labels[idx], probs[idx])
        if a is not None:
            values.append(a)
    if not values:
        return None, None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_mean_auc(folds: list[tuple[np.ndarray, np.ndarray]], n: int,
                       seed: int) -> tuple[float | None, float | None]:
    """95% percentile bootstrap interval of the *mean over folds* of the per-fold AUC: each
    resample redraws every fold's test slides within that fold, so the interval describes the
    cross-validated figure it is reported next to (not the AUC of pooled predictions)."""
    if n <= 0 or any(auc_score(y, pr) is None for y, pr in folds):
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        aucs = []
        for y, pr in folds:
            idx = rng.integers(0, len(y), len(y))
            aucs.append(auc_score(y[idx], pr[idx]))
        if all(a is not None for a in aucs):
            values.append(float(np.mean(aucs)))
    if not values:
        return None, None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def roc_points(labels: np.ndarray, probs: np.ndarray) -> list[dict[str, float]]:
    """ROC curve of class 1 (binary) as rows ``fpr, tpr, threshold``; empty when undefined."""
    if probs.shape[1] != 2 or len(np.unique(labels)) < 2:
        return []
    fpr, tpr, thr = roc_curve(labels, probs[:, 1])
    return [{"fpr": float(a), "tpr": float(b), "threshold": float(min(t, 1.0))} for a, b, t in zip(fpr, tpr, thr)]


def confusion(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``[C, C]`` confusion matrix (rows actual, columns predicted)."""
    c = probs.shape[1]
    return confusion_matrix(labels, probs.argmax(1), labels=list(range(c)))
