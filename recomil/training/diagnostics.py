"""Per-epoch diagnostics that show a collapsing run while it happens.

Each epoch's log row gets (names are columns of ``results/train_log/fold_<k>.csv``, DVC plots and
wandb):

- ``grad_norm_mean``, ``grad_norm_max``: the L2 norm of each optimiser step's gradient *before*
  clipping; ``clipped_share``: the share of steps that ``grad_clip`` rescaled (0 without clipping);
- ``train_ptrue_<class>``: the mean probability the model gave the true class, over the epoch's
  training bags of that class, as the training pass computed it (dropout and gate on);
  ``val_ptrue_<class>`` the same on the validation slides (eval mode);
- ``val_pred_<class>``: the share of validation slides predicted as that class (argmax).

A run that predicts one class for every validation slide for :data:`COLLAPSE_EPOCHS` epochs in a
row after warm-up and prototype freezing gets one warning line naming the fold and those epochs
(:class:`CollapseWatch`); the summary keeps the epochs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: epochs in a row with one predicted class for every validation slide that count as a collapse
COLLAPSE_EPOCHS = 3


def column(cls: str) -> str:
    """A class name as a column-name suffix (letters, digits and ``_``)."""
    return re.sub(r"\W+", "_", str(cls)).strip("_") or "class"


class StepStats:
    """Running sums of one epoch's steps, kept on the device (read once, at the epoch's end)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.norm_sum = torch.zeros((), device=device)
        self.norm_max = torch.zeros((), device=device)
        self.clipped = torch.zeros((), device=device)
        self.steps = 0
        self.ptrue_sum = torch.zeros(num_classes, device=device)
        self.count = torch.zeros(num_classes, device=device)

    def step(self, norm: torch.Tensor, max_norm: float) -> None:
        """One optimiser step whose gradient had ``norm`` before clipping at ``max_norm`` (0: none)."""
        norm = norm.detach().float().to(self.norm_sum.device)
        self.norm_sum += norm
        self.norm_max = torch.maximum(self.norm_max, norm)
        if max_norm > 0:
            self.clipped += (norm > max_norm).float()
        self.steps += 1

    def bag(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """B training bags (one or a padded step's): ``logits`` ``[B, C]``, true classes ``y`` ``[B]``."""
        p = torch.softmax(logits.detach().float(), -1).gather(1, y[:, None])[:, 0]
        self.ptrue_sum.index_add_(0, y, p)
        self.count.index_add_(0, y, torch.ones_like(p))

    def row(self, classes: list[str]) -> dict[str, Any]:
        """The epoch's figures (host floats)."""
        steps = max(1, self.steps)
        ptrue = (self.ptrue_sum / self.count.clamp_min(1)).tolist()
        count = self.count.tolist()
        return {"grad_norm_mean": float(self.norm_sum) / steps, "grad_norm_max": float(self.norm_max),
                "clipped_share": float(self.clipped) / steps,
                **{f"train_ptrue_{column(c)}": (v if n else None) for c, v, n in zip(classes, ptrue, count)}}


def validation_row(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """``val_ptrue_<class>`` and ``val_pred_<class>`` of the validation slides (``probs`` ``[S, C]``)."""
    if len(labels) == 0:
        return {}
    labels = np.asarray(labels, dtype=int)
    pred = probs.argmax(1)
    row: dict[str, Any] = {}
    for k, c in enumerate(classes):
        mine = labels == k
        row[f"val_ptrue_{column(c)}"] = float(probs[mine, k].mean()) if mine.any() else None
    for k, c in enumerate(classes):
        row[f"val_pred_{column(c)}"] = float((pred == k).mean())
    return row


class CollapseWatch:
    """Finds runs of :data:`COLLAPSE_EPOCHS` or more epochs, from ``first_epoch`` on, in which every
    validation slide is predicted as the same class; warns once per such run of epochs."""

    def __init__(self, tag: str, first_epoch: int, classes: list[str]) -> None:
        self.tag, self.first_epoch, self.classes = tag, first_epoch, classes
        self.streak: list[int] = []
        self.cls: int | None = None
        self.warned = False
        self.collapsed: list[list[int]] = []

    def epoch(self, epoch: int, val_probs: np.ndarray | None, main: bool = True) -> None:
        """Record one epoch's validation probabilities ``[S, C]`` (None or empty: no validation)."""
        if epoch < self.first_epoch or val_probs is None or len(val_probs) < 2:
            return
        pred = val_probs.argmax(1)
        single = int(pred[0]) if (pred == pred[0]).all() else None
        if single is not None and single == self.cls:
            self.streak.append(epoch)
        else:
            self.streak, self.cls, self.warned = ([epoch], single, False) if single is not None else ([], None, False)
        if self.cls is not None and len(self.streak) >= COLLAPSE_EPOCHS:
            if not self.warned:
                self.collapsed.append(self.streak)
                self.warned = True
                if main:
                    print(f"warning: train: {self.tag}: every validation slide predicted {self.classes[self.cls]!r} "
                          f"in epochs {self.streak[0]}-{self.streak[-1]} (after warm-up): the model has collapsed "
                          f"to one class; see the per-epoch grad_norm_*, clipped_share and *_ptrue_* columns of "
                          f"the training log", file=sys.stderr, flush=True)
            else:
                self.collapsed[-1] = self.streak

    def state(self) -> dict[str, Any]:
        """Plain values to save with the resume state."""
        return {"streak": self.streak, "cls": self.cls, "warned": self.warned, "collapsed": self.collapsed}

    def load(self, saved: dict[str, Any] | None) -> None:
        """Continue from :meth:`state` of an interrupted run (None: a fresh run)."""
        if saved:
            self.streak, self.cls = list(saved["streak"]), saved["cls"]
            self.warned, self.collapsed = bool(saved["warned"]), [list(c) for c in saved["collapsed"]]

    def spans(self) -> list[list[int]]:
        """``[first, last]`` epoch of each collapsed stretch."""
        return [[s[0], s[-1]] for s in self.collapsed]


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """The per-epoch curves of one training run as a PNG (matplotlib, no network): losses, validation
    scores, gradient norms and clipped share, predicted probabilities per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]

    def series(key: str) -> list[float]:
        return [np.nan if r.get(key) is None else float(r[key]) for r in rows]

    # fixed margins rather than tight_layout, which draws the whole figure once more to measure it
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True,
                             gridspec_kw={"left": 0.06, "right": 0.95, "bottom": 0.08, "top": 0.91,
                                          "wspace": 0.18, "hspace": 0.2})
    panels = [
        (axes[0, 0], "loss", [k for k in ("loss", "ce", "val_loss") if any(k in r for r in rows)]),
        (axes[0, 1], "validation", [k for k in ("val_auc", "val_acc") if any(k in r for r in rows)]),
        (axes[1, 0], "gradient norm before clipping", ["grad_norm_mean", "grad_norm_max"]),
        (axes[1, 1], "mean probability of the true class",
         sorted({k for r in rows for k in r if "_ptrue_" in k})),
    ]
    for ax, name, keys in panels:
        for k in keys:
            ax.plot(ep, series(k), label=k, marker=".", markersize=3)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7)
    axes[1, 0].set_yscale("log")
    if any(r.get("clipped_share") for r in rows):
        twin = axes[1, 0].twinx()
        twin.plot(ep, series("clipped_share"), color="grey", linestyle=":", label="clipped_share")
        twin.set_ylim(0, 1.05)
        twin.legend(fontsize=7, loc="lower right")
    best = rows[-1].get("best_epoch") if rows else None
    for ax in axes.ravel():
        if best:
            ax.axvline(best, color="black", linewidth=0.8, linestyle="--")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.suptitle(title + (f" (dashed: selected epoch {best})" if best else ""), fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
