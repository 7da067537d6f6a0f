"""Model selection and early stopping (METHOD.md §4): which epoch's weights a fold keeps.

The trainer calls :func:`selection_step` once per epoch; ``benchmarks/selection_replay.py``
replays logged epochs through the same function.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recomil.config import Params

VAL_POLICIES = ("val_auc", "val_acc", "joint", "val_loss")


def selection_score(policy: str, val_auc: float | None, val_acc: float | None, train_loss: float,
                    val_loss: float | None = None) -> float:
    """Higher is better. ``val_auc`` falls back to accuracy when AUC is undefined; ``joint``
    counts an undefined AUC as 0; ``val_loss`` is the negated validation cross-entropy (CLAM's
    criterion: continuous, so it does not saturate on a few slides); ``train_loss`` is the negated
    training loss; ``last`` always improves."""
    if policy == "val_auc":
        return val_auc if val_auc is not None else (val_acc or 0.0)
    if policy == "val_acc":
        return val_acc or 0.0
    if policy == "joint":
        return ((val_auc or 0.0) + (val_acc or 0.0)) / 2
    if policy == "val_loss":
        return -val_loss if val_loss is not None else -math.inf
    if policy == "train_loss":
        return -train_loss
    return math.inf



def validation_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy ``-log p[y]`` of the validation slides (``probs`` ``[S, C]``, ``labels`` ``[S]``);
    probabilities are floored at 1e-12 so that a confident mistake costs ~27.6, not infinity."""
    picked = probs[np.arange(len(labels)), np.asarray(labels, dtype=int)]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())



def improves(policy: str, tie_break: str, score: float, val_loss: float | None, best_score: float,
             best_val_loss: float, min_delta: float) -> bool:
    """Whether this epoch becomes the selected model.

    A score above the best by more than ``min_delta`` always does. With ``tie_break: val_loss`` a
    validation policy also takes an epoch whose score is at least the best one's (on a handful of
    validation slides the AUC and accuracy saturate, often in the first epochs) and whose
    validation cross-entropy is lower; ``none`` keeps the first epoch of a tied score (the original).
    """
    if policy == "last" or score > best_score + min_delta:
        return True
    return (tie_break == "val_loss" and policy in VAL_POLICIES and val_loss is not None
            and score >= best_score and val_loss < best_val_loss)



def selection_start(p: Params, policy: str) -> int:
    """The first epoch that may become the selected model.

    With ``select_after_warmup`` (default) and a validation policy, the epochs of the learning-rate
    warm-up and of the frozen prototypes are not candidates (``max(warmup_epochs,
    freeze_protos_epochs) + 1`` on): on a few validation slides an undertrained warm-up epoch often
    scores highest by chance and was then kept. When the run has no epoch after them, every epoch
    is a candidate. ``false``: every epoch, as the original.
    """
    boundary = max(p.warmup_epochs, p.freeze_protos_epochs)
    if p.select_after_warmup and policy in VAL_POLICIES and p.epochs > boundary:
        return boundary + 1
    return 1



def selection_step(state: dict[str, Any], p: Params, policy: str, epoch: int, score: float,
                   val_loss: float | None, select_from: int) -> bool:
    """Model selection and early stopping after ``epoch``: whether it becomes the selected model.

    Updates ``state``'s ``best_score``, ``best_val_loss``, ``best_epoch``, ``stale`` (candidate
    epochs without improvement; with ``early_stop_after_warmup`` only those after warm-up and
    prototype freezing count) and ``stopped_early`` (``stale`` reached ``patience``; never with
    ``last``). What resets ``stale``: with ``patience_on: selection`` every newly selected epoch,
    with ``score`` only a score above the best by more than ``min_delta`` (an epoch selected by the
    validation-loss tie-break is kept but counts as one without improvement: a run whose validation
    AUC has saturated stops ``patience`` epochs later instead of running on while its loss creeps).
    The trainer calls it once per epoch; ``benchmarks/selection_replay.py`` replays
    logged epochs through it.
    """
    candidate = epoch >= select_from
    better = policy == "last" or score > state["best_score"] + p.min_delta
    chosen = candidate and improves(policy, p.tie_break, score, val_loss, state["best_score"],
                                    state["best_val_loss"], p.min_delta)
    if chosen:
        state.update(best_score=score, best_val_loss=val_loss if val_loss is not None else math.inf,
                     best_epoch=epoch)
    if chosen and (better or p.patience_on == "selection"):
        state["stale"] = 0
    elif candidate and (not p.early_stop_after_warmup or epoch > max(p.warmup_epochs, p.freeze_protos_epochs)):
        state["stale"] += 1
    if policy != "last" and state["stale"] >= p.patience:
        state["stopped_early"] = True
    return chosen



def snapshot_epochs(p: Params) -> list[int]:
    """The epochs whose weights ``snapshots: K`` keeps: K evenly spaced (rounded) over the epochs after
    warm-up and prototype freezing, the last epoch included (13, 22, 32, 41, 50 for K 5 and the
    defaults); ``[]`` when ``snapshots`` is 1 (off)."""
    if p.snapshots <= 1:
        return []
    boundary = max(p.warmup_epochs, p.freeze_protos_epochs)
    first = boundary + 1 if p.epochs > boundary else 1
    return sorted({int(e) for e in np.linspace(first, p.epochs, p.snapshots).round()})
